"""A run's HTML page and ``dipflow report`` when images done earlier are counted in the runs table, not rows (issue 12):
a run that found nothing new gets a page (its summary, links to the other runs' pages) and a report, both at the cost
of what it did. The output roots are written by the real writers (`reports.ReportWriter`, `runs.write_run_summary`);
no image is restored, so nothing here needs torch, Ray or Prefect."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_html_report import CHROMIUM, _chromium  # headless Chromium, once per page

from pipelines import storage
from pipelines.reporting import html_report, reports, runs

HOSTILE = "<img src=x onerror=alert(1)>"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _row(key: str, status: str = "ok", *, dataset: str = "d", error: str | None = None, at: int = 0) -> dict:
    """A report row without input or output files: its page has no thumbnail to make."""
    return {
        "dataset": dataset,
        "image_key": key,
        "task": "denoise",
        "config_hash": "c",
        "input_sha256": storage.sha256_hex(key.encode()),
        "status": status,
        "error": error,
        "psnr": 30.0 if status == "ok" else None,
        "wall_seconds": 1.5,
        "iteration_returned": 2,
        "iterations_run": 2,
        "started_at": T0 + timedelta(days=at),
        "finished_at": T0 + timedelta(days=at, seconds=2),
    }


def _summary(dataset: str = "d", *, day: int, flow: bool = True, **counts: int | str) -> dict:
    """A runs-table row, its counts zero unless given."""
    return {
        "flow_run_id": f"flow-{day}" if flow else None,
        "dataset": dataset,
        "task": "denoise",
        "config_hash": "c",
        "outcome": "finished",
        "listed": 0,
        "ok": 0,
        "errors": 0,
        "done_earlier": 0,
        "not_restored": 0,
        "not_images": 0,
        "verified_by_content": 0,
        "started_at": T0 + timedelta(days=day),
        "finished_at": T0 + timedelta(days=day, seconds=9),
        "seconds": 9.25,
        "seconds_to_first_dispatch": 0.75,
        **counts,
    }


@pytest.fixture
def root(tmp_path) -> str:
    """Four runs, oldest first: r0 (called outside a flow run: no page), r1 (two images of ``d``, one failed), r2
    (one image of a dataset with a hostile name, and a hostile error), r3 (found nothing new: no report row)."""
    out = str(tmp_path / "out")
    runs.write_run_summary(out, "r0", [_summary(day=0, flow=False, listed=1, ok=1)])
    with reports.ReportWriter(out, "r1") as writer:
        writer.append(_row("a.png", at=1), [{"dataset": "d", "image_key": "a.png", "iteration": i} for i in (1, 2)])
        writer.append(_row("b.png", "error", error="b.png: not an image", at=1))
    runs.write_run_summary(out, "r1", [_summary(day=1, listed=2, ok=1, errors=1)])
    with reports.ReportWriter(out, "r2") as writer:
        writer.append(_row("k<script>x</script>.png", dataset=HOSTILE, at=2))
    runs.write_run_summary(
        out, "r2", [_summary(HOSTILE, day=2, listed=1, ok=1, outcome="failed", error=f"boom {HOSTILE}")]
    )
    runs.write_run_summary(out, "r3", [_summary(day=3, listed=2, done_earlier=2, not_images=1)])
    return out


def _page(out: str, run_id: str) -> str:
    return storage.join(out, "html", f"run_id={run_id}", "index.html")


def _section(page: str, table_id: str) -> str:
    return page.split(f"<table id='{table_id}'>")[1].split("</table>")[0]


def _images(page: str) -> list[str]:
    """The image keys of the page's rows, as they are written (escaped)."""
    body = page.split('<table id="images">')[1].split("</table>")[0]
    return re.findall(r"<tr class='\w+'><td data-v='\d+'>\d+</td><td>[^<]*</td><td>([^<]*)</td>", body)


def test_a_run_that_found_nothing_new_gets_a_page_with_its_summary_and_the_history(root):
    written = html_report.write_html_report(root, _page(root, "r3"), run_id="r3")
    assert (written.rows, written.thumbs_made) == (0, 0)
    page = Path(_page(root, "r3")).read_text()
    assert _images(page) == [] and "no report rows" in page
    cells = re.findall(r"<td>([^<]*)</td>", _section(page, "run"))
    assert cells[:9] == ["d", "denoise", "finished", "2", "0", "0", "2", "0", "1"]  # listed … not images
    assert "9.2" in cells and "0.8" in cells  # seconds, and to the first dispatch
    assert not (Path(root) / "html" / "run_id=r3" / "thumbs").exists()

    history = _section(page, "history")
    assert re.findall(r"<tr><td>(?:<b>|<a [^>]+>)?(r\d)", history) == ["r3", "r2", "r1", "r0"]  # newest first
    assert "<b>r3</b> (this page)" in history
    links = re.findall(r'<a href="([^"]+)">(r\d)</a>', history)
    assert links == [("../run_id=r2/index.html", "r2"), ("../run_id=r1/index.html", "r1")]  # r0 ran without a page


def test_every_history_link_opens_that_runs_page(root):
    for run_id in ("r1", "r2", "r3"):
        html_report.write_html_report(root, _page(root, run_id), run_id=run_id)
    for run_id in ("r1", "r2", "r3"):
        page = Path(_page(root, run_id))
        hrefs = re.findall(r'<a href="([^"]+)">', _section(page.read_text(), "history"))
        assert len(hrefs) == 2, (run_id, hrefs)
        for href in hrefs:
            assert (page.parent / href).resolve().is_file(), (run_id, href)


def test_a_runs_page_shows_only_its_own_rows(root):
    written = html_report.write_html_report(root, _page(root, "r1"), run_id="r1")
    page = Path(_page(root, "r1")).read_text()
    assert written.rows == 2 and _images(page) == ["a.png", "b.png"]
    assert "<p>runs: r1</p>" in page and "script&gt;x" not in page
    assert re.findall(r"<td>([^<]*)</td>", _section(page, "run"))[3:6] == ["2", "1", "1"]
    assert "b.png: not an image" in page.split('id="failures"')[1]


def test_hostile_names_and_errors_are_escaped(root):
    html_report.write_html_report(root, _page(root, "r2"), run_id="r2")
    page = Path(_page(root, "r2")).read_text()
    assert HOSTILE not in page and "<script>x" not in page and page.count("<script") == 1  # the page's own
    assert html.escape(HOSTILE) in _section(page, "run") and f"boom {html.escape(HOSTILE)}" in page
    assert _images(page) == [html.escape("k<script>x</script>.png")]


def test_a_runs_page_reads_no_other_runs_report(root, monkeypatch):
    read, listed = [], []
    for name in ("read_report", "read_curves"):
        real = getattr(reports, name)
        monkeypatch.setattr(
            reports,
            name,
            lambda *a, _real=real, _name=name, **k: read.append((_name, k.get("run_id"))) or _real(*a, **k),
        )
    real_list = storage.list_files
    monkeypatch.setattr(storage, "list_files", lambda uri, *a, **k: listed.append(uri) or real_list(uri, *a, **k))

    html_report.write_html_report(root, _page(root, "r1"), run_id="r1")
    assert read == [("read_report", "r1"), ("read_curves", "r1")]
    pending = storage.join(root, "_dipflow", "pending")  # a run's parts not yet committed (reporting/layout.py)
    r1 = {storage.join(base, kind, "run_id=r1") for base in (root, pending) for kind in ("report", "curves")}
    mine = r1 | {storage.join(root, "runs")}
    assert set(listed) <= mine | {storage.join(root, "html", "run_id=r1", "thumbs")}, listed

    read.clear(), listed.clear()
    html_report.write_html_report(root, _page(root, "r3"), run_id="r3")
    assert read == [("read_report", "r3")]  # nothing restored: no curves, no thumbnails
    r3 = {storage.join(base, "report", "run_id=r3") for base in (root, pending)}
    assert set(listed) == r3 | {storage.join(root, "runs")}, listed


def test_without_a_run_the_page_is_as_it_was_and_an_empty_root_is_an_error(root, tmp_path):
    written = html_report.write_html_report(root, str(tmp_path / "all" / "index.html"))
    page = (tmp_path / "all" / "index.html").read_text()
    assert written.rows == 3 and "id='history'" not in page and "id='run'" not in page
    with pytest.raises(ValueError, match="no report rows under"):
        html_report.write_html_report(str(tmp_path / "empty"), str(tmp_path / "e.html"))
    with pytest.raises(ValueError, match="no run r9 in its runs table"):
        html_report.write_html_report(root, str(tmp_path / "r9.html"), run_id="r9")


def test_the_flow_publishes_a_page_for_a_run_that_found_nothing_new(root, monkeypatch):
    import logging

    import prefect.artifacts

    from pipelines import flows, jobs, run_tracker
    from pipelines.settings import RestoreSettings

    made = {}
    monkeypatch.setattr(flows, "_in_flow_run", lambda: True)
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", lambda *a, **k: None)
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda md, **k: made.setdefault("md", md))
    tracker = run_tracker.Tracker()
    config = jobs.restore_config(RestoreSettings(task="denoise", preset="fast"))
    plan = jobs.Plan("d", config, output=root, listed=2, done_earlier=2)
    flows._publish("r3", None, root, None, [plan], tracker, "restore-dataset", logging.getLogger("test"))
    page = Path(_page(root, "r3"))
    assert page.is_file() and f"HTML report: [{page}](file://{page})" in made["md"]


# ------------------------------------------------------------------------------------------------ dipflow report


def test_report_of_a_run_that_found_nothing_new(root, capsys):
    from pipelines import cli

    assert cli.main(["report", root, "--run-id", "r3"]) == 0
    out = capsys.readouterr().out
    assert "run r3, d: 2 listed, 0 restored, 2 done earlier, 0 failed, 0 not restored, 1 not images" in out
    assert "finished in 9.2 s" in out

    assert cli.main(["report", root, "--run-id", "r3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["runs"], report["summary"], report["failures"]) == (["r3"], [], [])
    (summary,) = report["runs_table"]
    assert (summary["run_id"], summary["listed"], summary["done_earlier"]) == ("r3", 2, 2)
    assert summary["started_at"].startswith("2026-01-04")

    page = Path(root) / "cli" / "index.html"
    assert cli.main(["report", root, "--run-id", "r3", "--html", str(page), "--summary-markdown"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| dataset |") and "run r3, d: 2 listed" in captured.err
    assert "HTML report:" in captured.err and "id='history'" in page.read_text()


def test_report_over_all_runs_adds_the_last_run_and_keeps_its_shapes(root, capsys):
    from pipelines import cli

    assert cli.main(["report", root]) == 0
    out = capsys.readouterr().out
    assert "latest result of each image over 4 run(s)" in out
    assert out.rstrip().splitlines()[-1].startswith("last run r3, d: 2 listed, 0 restored, 2 done earlier")

    assert cli.main(["report", root, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == ["r0", "r1", "r2", "r3"]
    assert [(s["dataset"], s["images"], s["ok"]) for s in report["summary"]] == [(HOSTILE, 1, 1), ("d", 2, 1)]
    assert [r["run_id"] for r in report["runs_table"]] == ["r0", "r1", "r2", "r3"]

    assert cli.main(["report", root, "--summary-markdown"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| dataset |") and "last run r3" not in captured.out
    assert captured.err.startswith("last run r3, d:")


def test_report_reads_a_root_without_a_runs_table_beside_one_with_it(root, tmp_path, capsys):
    from pipelines import cli

    old = str(tmp_path / "old")  # written before the runs table existed: report rows only
    with reports.ReportWriter(old, "before") as writer:
        writer.append(_row("z.png", dataset="e"))
    assert cli.main(["report", root, old, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == ["before", "r0", "r1", "r2", "r3"] and len(report["runs_table"]) == 4
    assert cli.main(["report", old, root]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("last run")]
    assert lines == [f"last run r3, {runs.describe(_summary(day=3, listed=2, done_earlier=2, not_images=1))}"]


def test_report_of_a_root_with_neither_rows_nor_runs_is_an_error(tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["report", str(tmp_path)]) == 1
    assert "no report rows under" in capsys.readouterr().err
    runs.write_run_summary(str(tmp_path), "r1", [_summary(day=1, listed=1, done_earlier=1)])
    assert cli.main(["report", str(tmp_path), "--run-id", "r2"]) == 1
    assert "for run r2" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_run_pages_in_headless_chromium(root, tmp_path):
    """The page's script runs on a page without image rows as on one with them."""
    for run_id, rows in (("r3", "0"), ("r1", "2")):
        html_report.write_html_report(root, _page(root, run_id), run_id=run_id)
        url = Path(_page(root, run_id)).as_uri()
        dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", f"{url}?check=1"], tmp_path / f"profile-{run_id}")
        assert dom.returncode == 0, dom.stderr[-2000:]
        body = re.search(r"<body([^>]*)>", dom.stdout)
        assert body and 'data-checked="1"' in body.group(1), f"the page's check did not run: {dom.stdout[:500]}"
        assert f'data-rows="{rows}"' in body.group(1), body.group(1)
        assert "page 1 of 1" in dom.stdout
