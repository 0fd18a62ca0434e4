"""The dipflow command: help, restore-image, restore + report through the flow, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines import cli

COMMANDS = ["restore", "evaluate", "report", "restore-image", "demo"]
FAST = ["--preset", "fast", "--iterations", "2", "--channels", "8", "--quiet"]


def test_help_is_instant_and_imports_no_engine():
    code = ("import sys; from pipelines import cli\n"
            "try: cli.main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = {'torch', 'ray', 'prefect', 'pyarrow'} & set(sys.modules)\n"
            "assert not heavy, heavy")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"dipflow {command}" in text.split("examples:")[1]


def test_task_choices_are_dipcore_tasks():
    import dipcore

    assert tuple(cli.TASKS) == tuple(dipcore.TASKS)


def test_restore_image_on_a_tiny_png(tmp_path, write_images, capsys):
    import dipcore

    (src,) = write_images(str(tmp_path), ["tiny.png"])
    out = tmp_path / "restored" / "tiny.png"
    assert cli.main(["restore-image", src, "-o", str(out), "--task", "sr", "--scale", "2", "--json", *FAST]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["width"], result["height"], result["iterations_run"]) == (64, 64, 2)
    assert dipcore.load_image(out).shape == (64, 64, 3)


def test_restore_then_report(ray_local, prefect_harness, tmp_path, write_images, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(str(src), ["a.png", "b.png"])
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code = cli.main(["restore", str(src), "-o", str(out), "--task", "denoise", "--json", *FAST])
    captured = capsys.readouterr()
    assert code == cli.EXIT_FAILED_IMAGES  # finished, but one image failed …
    summary = json.loads(captured.out)
    assert (summary["ok"], summary["error"]) == (2, 1)
    assert "1 image(s) failed" in captured.err and "broken.png" in captured.err  # … and it is listed

    assert cli.main(["report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == [summary["run_id"]]
    assert [(r["images"], r["ok"], r["errors"]) for r in report["summary"]] == [(3, 2, 1)]
    assert [f["image_key"] for f in report["failures"]] == ["broken.png"]

    assert cli.main(["report", str(out), "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| dataset | task |")
    assert cli.main(["report", str(out)]) == 0
    assert "denoise" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], {"early_stopping": "observe", "runs": None, "classical": True}),
        (["--early-stopping", "off", "--runs", "3", "--no-classical"],
         {"early_stopping": "off", "runs": 3, "classical": False}),
    ],
)
def test_evaluate_protocol_options_reach_the_flow(extra, expected, monkeypatch):
    seen = {}

    def fake_flow(name, args, **params):
        seen.update(params, flow=name)
        return {"run_id": "r", "summary": [], "ok": 0, "error": 0, "skipped": 0, "report": "-", "not_images": 0,
                "failures": []}  # fmt: skip

    monkeypatch.setattr(cli, "_run_flow", fake_flow)
    assert cli.main(["evaluate", "cbm3d9", "--data-root", "data", "-o", "out", "--json", *extra]) == 0
    assert seen["flow"] == "evaluate" and {k: seen[k] for k in expected} == expected
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "cbm3d9", "--data-root", "data", "-o", "out", "--early-stopping", "sometimes"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{tmp}/nothing-here"], "no report rows under"),
        (["restore-image", "{tmp}/missing.png", "-o", "{tmp}/x.png", "--task", "denoise"], "no such file"),
        (["restore-image", "{tmp}/bad.png", "-o", "{tmp}/x.png", "--task", "denoise"], "not a recognised image"),
        (["report", "{tmp}", "--storage-option", "novalue"], "must look like key=value"),
        (["evaluate", "set5", "-o", "{tmp}/e"], "pass --data-root"),
    ],
)
def test_errors_print_one_message_and_exit_1(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DIPFLOW_DEBUG", raising=False)
    monkeypatch.delenv("DIPFLOW_DATA_ROOT", raising=False)
    (tmp_path / "bad.png").write_bytes(b"GIF89a-but-not-really")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dipflow: error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_console_script_reports_a_flow_failure_in_one_line(prefect_harness, tmp_path):
    """A fresh `dipflow` process (against the session's Prefect server): the flow fails on a missing source, and the
    user sees one line, not Prefect's traceback."""
    import os

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("DIPFLOW_DEBUG", None)
    argv = [sys.executable, "-m", "pipelines.cli", "restore", str(tmp_path / "nope"), "-o", str(tmp_path / "out"),
            "--task", "sr", *FAST]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"dipflow: error: source does not exist: {tmp_path / 'nope'}"]


def test_usage_errors_exit_2_and_debug_shows_tracebacks(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["restore", "src", "--task", "denoise"])  # no -o
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["restore-image", "a.png", "-o", "b.png", "--task", "sharpen"])
    assert exit_.value.code == 2
    capsys.readouterr()
    monkeypatch.setenv("DIPFLOW_DEBUG", "1")
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err
