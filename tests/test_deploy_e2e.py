"""The scheduled path, for real: a Prefect server and a Ray head on 127.0.0.1, prefect.yaml deployed onto them, one
restoration run picked up by a process worker and checked in its Parquet report.

Everything runs as it would on a GPU box, minus the GPU: `prefect server start`, `ray start --head` with token
authentication, `prefect work-pool create` with deploy/prefect's template, `prefect deploy --all --no-prompt`,
`prefect worker start --run-once`. Every process is started in its own session and stopped by its id at the end of
the module, whether the tests pass or not; nothing outside the test's temporary folders is written (the Ray token
lives in a temporary file named by RAY_AUTH_TOKEN_PATH, not in ~/.ray).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "dipflow-gpu"  # the pool prefect.yaml's deployments name
QUEUE = "e2e"  # the triggered run goes here, so the worker never picks a scheduled production run
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT_YAML["deployments"]}


# ------------------------------------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Started:
    """A process this module started in a session of its own; `stop` ends that session and nothing else."""

    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- last lines of {self.name} ({self.log}) ---\n" + "\n".join(lines[-n:])

    def stop(self, grace: float = 30.0) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)  # Ray's --block and Prefect's server clean up on SIGTERM
                self.proc.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        # Whatever is left of the session this process leads (its pgid is its pid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _start(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Started:
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    return Started(name, proc, log)


def _run(
    argv: list[str], env: dict[str, str], *, cwd: Path = ROOT, timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (a path unique to this test run)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class Stack:
    env: dict[str, str]  # for every CLI and worker: the test server, the test Ray token, no user profile
    api: str  # http://127.0.0.1:<port>/api
    ray_address: str  # 127.0.0.1:<port>
    work: Path
    logs: Path
    processes: list[Started]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy-e2e")
    logs = work / "logs"
    logs.mkdir()
    # Ray's socket paths must stay under 107 characters: a short folder of our own under the system temp dir.
    ray_tmp = Path(tempfile.mkdtemp(prefix="dfe2e-"))
    token = work / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)

    prefect_port, ray_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    env.pop("DIPFLOW_HOME", None)  # unset where `prefect deploy` runs (prefect.yaml explains why)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_LOGGING_LEVEL="INFO",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    processes: list[Started] = []
    stack = Stack(env, api, f"127.0.0.1:{ray_port}", work, logs, processes)
    try:
        server = _start(
            "prefect-server",
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(prefect_port),
                "--no-ui",
                "--analytics-off",
            ],
            env,
            logs,
        )
        processes.append(server)
        ports = [_free_port() for _ in range(8)]
        # Below Linux's ephemeral range (32768+), where _free_port's ports and Ray's own random ones come from:
        # a worker range inside it collided with the object manager's port in CI.
        worker_lo = 20000 + secrets.randbelow(12000)
        head = _start(
            "ray-head",
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={ray_port}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={ray_tmp}",
                f"--dashboard-agent-listen-port={ports[1]}",
                f"--dashboard-agent-grpc-port={ports[2]}",
                f"--runtime-env-agent-port={ports[3]}",
                f"--metrics-export-port={ports[4]}",
                f"--node-manager-port={ports[5]}",
                f"--object-manager-port={ports[6]}",
                f"--min-worker-port={worker_lo}",
                f"--max-worker-port={worker_lo + 200}",
            ],
            {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},  # for the head alone, as docs/deploy.md's head line
            logs,
        )
        processes.append(head)
        _wait_for_server(server, api)
        _wait_for_ray(head, stack)
        yield stack
    finally:
        for p in reversed(processes):
            p.stop()
        for pid in _pids_mentioning(str(ray_tmp)):  # Ray processes that outlived their session, by id
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_for_server(server: Started, api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"prefect server exited {server.proc.returncode}\n{server.tail()}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout:.0f} s\n{server.tail()}")


def _ray_cli(stack: Stack) -> dict[str, str]:
    """The environment for Ray's own CLI (`ray status`) against this loopback head: like any Ray driver it turns
    127.0.0.1 into the host's routable address unless Ray's single-machine mode is on. dipflow's drivers need no such
    thing (tests/test_deploy_laptop.py runs them without it)."""
    return {**stack.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _wait_for_ray(head: Started, stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            raise AssertionError(f"ray start exited {head.proc.returncode}\n{head.tail()}")
        if "Ray runtime started" in head.log.read_text(errors="replace"):
            probe = _run([str(BIN / "ray"), "status", f"--address={stack.ray_address}"], _ray_cli(stack), check=False)
            if probe.returncode == 0:
                return
        time.sleep(1)
    raise AssertionError(f"ray head not up after {timeout:.0f} s\n{head.tail()}")


@pytest.fixture(scope="module")
def pools(stack):
    """dipflow's work pools, created from the templates in deploy/prefect (the server validates them)."""
    templates = ROOT / "deploy" / "prefect"
    _run(
        [
            "prefect",
            "work-pool",
            "create",
            POOL,
            "--type",
            "process",
            "--base-job-template",
            str(templates / "process-base-job-template.json"),
        ],
        stack.env,
    )
    _run(
        [
            "prefect",
            "work-pool",
            "create",
            "dipflow-k8s",
            "--type",
            "kubernetes",
            "--base-job-template",
            str(templates / "kubernetes-base-job-template.json"),
        ],
        stack.env,
    )
    _run(["prefect", "work-queue", "create", QUEUE, "--pool", POOL], stack.env)
    return POOL


@pytest.fixture(scope="module")
def deployed(stack, pools):
    """`prefect deploy --all --no-prompt` from the repository root: the deployments, by name."""
    done = _run(["prefect", "deploy", "--all", "--no-prompt"], stack.env, timeout=300)
    with stack.client() as c:
        r = c.post("/deployments/filter", json={"deployments": {"name": {"any_": sorted(DEPLOYMENTS)}}})
        r.raise_for_status()
        found = {d["name"]: d for d in r.json()}
    assert set(found) == set(DEPLOYMENTS), f"registered {sorted(found)}\n{done.stdout[-3000:]}"
    return found


# ------------------------------------------------------------------------------------------------ tests


def test_the_server_accepts_both_work_pool_templates(stack, pools):
    with stack.client() as c:
        for name, kind in ((POOL, "process"), ("dipflow-k8s", "kubernetes")):
            r = c.get(f"/work_pools/{name}")
            r.raise_for_status()
            pool = r.json()
            assert pool["type"] == kind
            local = json.loads((ROOT / "deploy" / "prefect" / f"{kind}-base-job-template.json").read_text())
            assert pool["base_job_template"] == local


def test_a_bad_cron_is_rejected(stack, pools):
    """By the server's API, and by `prefect deploy` (which then registers nothing)."""
    with stack.client() as c:
        flow = c.post("/flows/", json={"name": "dipflow-cron-probe"})
        flow.raise_for_status()
        bad = {
            "name": "bad-cron",
            "flow_id": flow.json()["id"],
            "schedules": [{"schedule": {"cron": "61 25 * * *", "timezone": "UTC"}, "active": True}],
        }
        assert c.post("/deployments/", json=bad).status_code == 422
        good = {**bad, "name": "good-cron", "schedules": [{"schedule": {"cron": "0 2 * * *", "timezone": "UTC"}}]}
        created = c.post("/deployments/", json=good)
        assert created.status_code in (200, 201), created.text
        extra = c.post(f"/deployments/{created.json()['id']}/schedules", json=[{"schedule": {"cron": "not a cron"}}])
        assert extra.status_code == 422

    # The same through prefect.yaml: a throwaway project whose only deployment has a bad cron.
    project = stack.work / "bad-cron-project"
    project.mkdir()
    (project / "probe.py").write_text("from prefect import flow\n\n@flow\ndef probe() -> None:\n    pass\n")
    spec = {
        "name": "probe",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        "deployments": [
            {
                "name": "bad-cron",
                "entrypoint": "probe.py:probe",
                "work_pool": {"name": POOL},
                "schedules": [{"cron": "61 25 * * *", "timezone": "UTC"}],
            }
        ],
    }
    (project / "prefect.yaml").write_text(yaml.safe_dump(spec))
    done = _run(["prefect", "deploy", "--all", "--no-prompt"], stack.env, cwd=project, check=False)
    assert done.returncode != 0, f"a bad cron was deployed:\n{done.stdout[-2000:]}"
    assert re.search(r"(?i)cron", done.stdout + done.stderr), done.stdout[-2000:] + done.stderr[-2000:]
    with stack.client() as c:
        r = c.post("/deployments/filter", json={"deployments": {"name": {"any_": ["bad-cron"]}}})
        assert r.json() == []


def test_the_ray_head_refuses_a_wrong_token(stack):
    """Token authentication is really on: the right token gets in, a wrong one is refused by the head."""
    ray_status = [str(BIN / "ray"), "status", f"--address={stack.ray_address}"]
    assert _run(ray_status, _ray_cli(stack), check=False, timeout=60).returncode == 0
    wrong = {k: v for k, v in _ray_cli(stack).items() if k != "RAY_AUTH_TOKEN_PATH"} | {"RAY_AUTH_TOKEN": "0" * 64}
    refused = _run(ray_status, wrong, check=False, timeout=60)
    assert refused.returncode != 0
    assert "InvalidAuthToken" in refused.stdout + refused.stderr, refused.stderr[-2000:]


def _scheduled_runs(stack: Stack, deployment_id: str) -> list[dict[str, Any]]:
    with stack.client() as c:
        r = c.post(
            "/flow_runs/filter",
            json={
                "flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["SCHEDULED"]}}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 10,
            },
        )
        r.raise_for_status()
        return r.json()


def test_deploy_all_registers_the_schedules_and_the_server_plans_runs(stack, deployed):
    for name, spec in DEPLOYMENTS.items():
        d = deployed[name]
        assert d["entrypoint"] == spec["entrypoint"]
        assert d["work_pool_name"] == POOL
        assert d["paused"] is False
        (schedule,) = d["schedules"]
        assert schedule["active"] is True
        assert schedule["schedule"]["cron"] == spec["schedules"][0]["cron"]
        assert schedule["schedule"]["timezone"] == "UTC"
        # Unset at deploy time, the working directory is resolved by the worker when a run starts.
        assert "{{ $DIPFLOW_HOME }}" in json.dumps(d["pull_steps"])
        assert {k: d["parameters"][k] for k in spec["parameters"]} == spec["parameters"]
        if "concurrency_limit" in spec:  # one nightly at a time, a colliding night is cancelled
            assert d["global_concurrency_limit"]["limit"] == spec["concurrency_limit"]["limit"]
            assert d["concurrency_options"]["collision_strategy"] == spec["concurrency_limit"]["collision_strategy"]

    # The scheduler service fills in upcoming runs; they must fall on the cron's times.
    deadline = time.monotonic() + 90
    runs: dict[str, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        runs = {name: _scheduled_runs(stack, deployed[name]["id"]) for name in DEPLOYMENTS}
        if all(runs.values()):
            break
        time.sleep(2)
    assert all(runs.values()), f"no upcoming runs listed: { {k: len(v) for k, v in runs.items()} }"
    now = datetime.now(UTC)
    for name, listed in runs.items():
        starts = [datetime.fromisoformat(r["expected_start_time"]).astimezone(UTC) for r in listed]
        assert all(s > now for s in starts)
        minute, hour, _, _, dow = DEPLOYMENTS[name]["schedules"][0]["cron"].split()
        for s in starts:
            assert (s.minute, s.hour) == (int(minute), int(hour)), f"{name}: a run at {s}"
            if dow != "*":
                assert s.isoweekday() % 7 == int(dow), f"{name}: a run on {s:%A}"
    assert len(runs["nightly-restoration"]) >= 2  # several nights ahead, not one run


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64]
    base = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1)  # a smooth gradient, plus some noise
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(path)


def test_a_triggered_restoration_runs_on_a_process_worker_and_reports_every_image(stack, deployed):
    from pipelines.reporting.reports import read_report

    source, output = stack.work / "in", stack.work / "out"
    source.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        _png(source / name, i)
    parameters = {
        "source": str(source),
        "output": str(output),
        # each model replaces the deployment's whole (Prefect merges one level deep): the task is repeated
        "settings": {"task": "denoise", "preset": "fast", "iterations": 3, "channels": 8},
        # replaces the deployment's `execution` whole: its ray_address is repeated, as the docs say to
        "execution": {"ray_address": stack.ray_address, "gpus_per_worker": 0.0},  # no GPU: CPU actors on the head
    }
    with stack.client() as c:
        r = c.post(
            f"/deployments/{deployed['nightly-restoration']['id']}/create_flow_run",
            json={"parameters": parameters, "work_queue_name": QUEUE},
        )
        assert r.status_code in (200, 201), r.text
        run_id = r.json()["id"]

    # The worker starts flow runs where dipflow lives: DIPFLOW_HOME is the pull step's working directory.
    worker_env = {**stack.env, "DIPFLOW_HOME": str(ROOT)}
    worker = _start(
        "prefect-worker",
        [
            "prefect",
            "worker",
            "start",
            "--pool",
            POOL,
            "--work-queue",
            QUEUE,
            "--type",
            "process",
            "--run-once",
            "--limit",
            "1",
            "--install-policy",
            "never",
            "--name",
            "e2e-worker",
        ],
        worker_env,
        stack.logs,
    )
    stack.processes.append(worker)
    try:
        worker.proc.wait(600)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not finish in 600 s\n{worker.tail(120)}") from None
    finally:
        worker.stop(grace=10)

    with stack.client() as c:
        flow_run = c.get(f"/flow_runs/{run_id}").json()
    state = flow_run["state"]
    assert state["type"] == "COMPLETED", f"flow run ended {state['type']}: {state.get('message')}\n{worker.tail(120)}"
    assert worker.proc.returncode == 0, worker.tail()

    table = read_report(str(output))
    rows = [r for r in table.to_pylist() if r["flow_run_id"] == run_id]
    assert sorted(r["image_key"] for r in rows) == ["a.png", "b.png"], rows
    assert all(r["status"] == "ok" for r in rows), [(r["image_key"], r["status"], r["error"]) for r in rows]
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        assert r["iterations_run"] == 3
        out = r["output_uri"]
        assert out and Path(out.removeprefix("file://")).exists(), out
