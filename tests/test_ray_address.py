"""`dipflow restore --ray-address …` where no head answers, run as a user runs it: with none of the tests' RAY_*
variables. A wrong address ends within its timeout with one line and nothing written; a signal while connecting is
honoured; a worker whose start fails says why (its exception, plain text) on the command line and in the runs table.
Joining a head that runs: tests/test_deploy_laptop.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _images(folder: Path, n: int = 2) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def _restore(src: Path, out: str, env: dict[str, str], *extra: str, cwd: Path, timeout: float = 300):
    argv = [str(BIN / "dipflow"), "restore", str(src), "-o", out, "--task", "denoise"]
    argv += ["--iterations", "2", "--channels", "4", *extra]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_wrong_address_fails_fast_with_one_line_and_writes_nothing(tmp_path):
    port = _free_port()
    src, out = _images(tmp_path / "photos"), tmp_path / "out"
    env = _env(tmp_path, RAY_AUTH_MODE="token")
    started = time.monotonic()
    done = _restore(
        src, str(out), env, "--ray-address", f"127.0.0.1:{port}", "--ray-connect-timeout", "3", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"dipflow: error: cannot join the Ray cluster at 127.0.0.1:{port}: connection refused")
    assert "check that its head runs" in line
    assert not out.exists()  # no lease, no empty output folder

    # SIGTERM while it connects: exit 143 at once, one line, still nothing written.
    argv = [str(BIN / "dipflow"), "restore", str(src), "-o", str(out), "--task", "denoise"]
    argv += ["--ray-address", f"127.0.0.1:{port}", "--ray-connect-timeout", "120"]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # past the imports, inside the wait for the head
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines() == ["dipflow: terminated (SIGTERM); run the same command again to resume"]
    assert not out.exists()


@pytest.mark.slow
def test_a_worker_that_cannot_start_says_why(tmp_path):
    """dipcore not importable on the workers: a package of that name that imports a missing module comes first on
    the workers' PYTHONPATH (a runtime_env given the way Ray Jobs give one), not on the driver's."""
    shadow = tmp_path / "shadow" / "dipcore"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("import dipcore_missing_dependency  # noqa: F401\n")
    job = {"runtime_env": {"env_vars": {"PYTHONPATH": str(shadow.parent)}}}
    env = {**os.environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}
    src, out = _images(tmp_path / "photos"), tmp_path / "out"
    done = _restore(src, str(out), env, "--workers", "1", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    raised = "ModuleNotFoundError: No module named 'dipcore_missing_dependency'"
    assert f"worker 0: {raised}" in done.stderr.strip().splitlines()[-1]
    assert "\x1b" not in done.stderr
    (summary,) = list((out / "runs").glob("run_id=*/summary.parquet"))
    error = pq.read_table(summary).to_pylist()[0]["error"]
    assert raised in error and not re.search(r"\x1b|\[3\dm", error)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("address", "env", "said"),
    [
        # no --ray-address: RAY_ADDRESS is joined, as ray.init() joins it (a Ray Jobs entrypoint has it set)
        (
            None,
            {"RAY_ADDRESS": "127.0.0.1:{port}"},
            "at 127.0.0.1:{port} (no address → RAY_ADDRESS): connection refused",
        ),
        ("auto", {"RAY_ADDRESS": "127.0.0.1:{port}"}, "at 127.0.0.1:{port} (auto → RAY_ADDRESS): connection refused"),
        ("auto", {}, "no Ray cluster to join for the address auto: {tmp}/ray/ray_current_cluster does not exist"),
        ("head:port", {}, "the Ray address 'head:port' is not host:port"),
    ],
)
def test_the_address_a_run_joins_is_said_in_one_line_before_prefect_starts(
    address, env, said, tmp_path, monkeypatch, capsys
):
    """In seconds (the CLI asks before Prefect's server starts), exit 1, nothing written. `auto` reads the address
    file of Ray's temp folder (RAY_TMPDIR here: one without a head) and nothing else."""
    from pipelines import cli

    port = _free_port()
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # else Ray's token check would set it for the rest of the tests
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=port))
    src, out = _images(tmp_path / "photos"), tmp_path / "out"
    argv = ["restore", str(src), "-o", str(out), "--task", "denoise", "--ray-connect-timeout", "1"]
    started = time.monotonic()
    assert cli.main(argv + (["--ray-address", address] if address else [])) == 1
    assert time.monotonic() - started < 30
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert said.format(port=port, tmp=tmp_path) in line, line
    assert not out.exists()
