"""pipelines.reporting.html_report on a tiny real run (one evaluation image, one restored image, one broken file): the
page's structure, thumbnails made once, ``dipflow report --html``, and the page in headless Chromium over file://."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import jobs, storage
from pipelines.reporting import html_report, reports, state

FAST = {"preset": "fast", "iterations": 2, "channels": 8}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An output root with two runs: SR ×4 evaluation of one 32-px clean image (synthesised observation), and
    denoising of one 32-px image plus one broken file (an ``error`` row). Restored in-process, no Ray/Prefect."""
    import numpy as np

    import dipcore
    from pipelines.execution.restorer import Restorer

    root = tmp_path_factory.mktemp("html")
    yy, xx = np.mgrid[0:32, 0:32] / 32  # conftest's write_images is per test; this fixture is per module
    for i, path in enumerate([root / "clean" / "a.png", root / "noisy" / "c.png"]):
        image = np.stack([xx, yy, (xx + yy) * (i + 1) / 4], axis=-1).astype(np.float32)
        storage.write_bytes_atomic(str(path), dipcore.encode_png(image))
    (root / "noisy" / "broken.png").write_bytes(b"not an image")
    out = str(root / "out")
    restorer = Restorer(device="cpu")
    settings = [("clean", "sr", jobs.Synthesis("sr", scale=4, crop_multiple=32)), ("noisy", "denoise", None)]
    for name, task, synthesis in settings:
        preset = dipcore.preset_for(task, scale=4 if synthesis else None, **FAST)
        config = jobs.run_config(preset, synthesis=synthesis)
        plan = jobs.Plan(dataset=name, config=config, output=storage.join(out, name))
        with reports.ReportWriter(out, f"run-{name}") as writer:
            todo = jobs.plan_stream(
                storage.iter_listing(str(root / name)),
                plan,
                run_id=f"run-{name}",
                done=state.DoneState.load(out, None, []),
                record=writer.append,
                adopt=lambda row: None,
            )
            for job in todo:
                outcome = restorer.run(job)
                writer.append(outcome.row, outcome.curves)
    return root


def test_page_has_one_row_per_image_and_thumbnails_made_once(run):
    page_uri = str(run / "site" / "index.html")
    first = html_report.write_html_report(str(run / "out"), page_uri)
    assert (first.rows, first.thumbs_made, first.thumbs_reused) == (3, 6, 0)  # eval: 3 + full-size; plain: 2
    thumbs = sorted((run / "site" / "thumbs").glob("*.png"))
    assert len(thumbs) == 6 and all(t.stat().st_size > 0 for t in thumbs)
    mtimes = {t: t.stat().st_mtime_ns for t in thumbs}

    page = Path(page_uri).read_text()
    body = page.split('<table id="images">')[1].split("</table>")[0]
    assert len(re.findall(r"<tr class='(ok|error)'>", body)) == 3
    for src in re.findall(r'src="(thumbs/[^"]+)"', body):
        assert (run / "site" / src).is_file(), src
    assert body.count('loading="lazy"') == 5  # eval: degraded, output, truth; plain: input, output
    assert "ground truth" in body and "not a recognised image format" in page.split('id="failures"')[1]
    assert re.search(r'<polyline class="loss" points="[\d.]+,[\d.]+ [\d.]+,[\d.]+', body)
    assert "<script" in page and "http://" not in page and "https://" not in page  # self-contained

    second = html_report.write_html_report(str(run / "out"), page_uri)
    assert (second.thumbs_made, second.thumbs_reused) == (0, 6)
    assert {t: t.stat().st_mtime_ns for t in thumbs} == mtimes, "thumbnails were encoded again"


def test_cli_report_html_keeps_the_table_output(run, capsys):
    from pipelines import cli

    page = run / "cli" / "index.html"
    assert cli.main(["report", str(run / "out"), "--html", str(page), "--summary-markdown"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| dataset |") and "HTML report:" in captured.err
    assert page.is_file() and len(list((run / "cli" / "thumbs").glob("*.png"))) == 6


def _chromium(args: list[str], user_data: Path, timeout: float = 45) -> subprocess.CompletedProcess:
    """Run headless Chromium once; killed (with its children) on timeout."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={user_data}",
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_page_in_headless_chromium(run, tmp_path):
    page = run / "browser" / "index.html"
    html_report.write_html_report(str(run / "out"), str(page))
    url = page.as_uri()
    # ?check makes the page's own script record, once every thumbnail shown has settled, how many loaded.
    dom = _chromium(["--virtual-time-budget=15000", "--dump-dom", f"{url}?check=1"], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body and 'data-checked="1"' in body.group(1), f"the page's check did not run: {dom.stdout[:500]}"
    seen = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    assert seen["thumbs-total"] == "5" and seen["thumbs-loaded"] == "5", seen  # every thumbnail: naturalWidth > 0
    assert seen["rows"] == "3", seen
    assert int(seen["curves"]) >= 2, seen  # polylines with points, drawn

    shot = tmp_path / "report.png"
    res = _chromium(
        ["--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", url], tmp_path / "profile-shot"
    )
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    print(f"screenshot: {shot}")


def test_flow_markdown_artifact_links_to_the_html_report(run, monkeypatch):
    import logging

    import prefect.artifacts

    from pipelines import flows, run_tracker

    made = {}
    monkeypatch.setattr(flows, "_in_flow_run", lambda: True)
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", lambda *a, **k: None)
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda md, **k: made.setdefault("md", md))
    tracker = run_tracker.Tracker()
    flows._publish("run-noisy", None, str(run / "out"), None, [], tracker, "restore-dataset", logging.getLogger("test"))
    page = run / "out" / "html" / "run_id=run-noisy" / "index.html"
    assert page.is_file() and f"HTML report: [{page}](file://{page})" in made["md"]
