"""A static HTML report of runs: one self-contained page, thumbnails beside it, curves as inline SVG.

The page of one run (``run_id``; the flow writes ``<output>/html/run_id=<run>/index.html`` for each run) shows what
that run did — its rows of the runs table (`pipelines.reporting.runs`: listed, restored, done by earlier runs …),
then its own image rows — and links the other runs' pages. It reads that run's report rows and curves and the runs
table (one small file per run), never another run's report: a nightly run that found nothing new gets a page that
says so, at the cost of what it did.

Layout beside the page (any fsspec URL; written through `pipelines.storage`)::

    <dir>/index.html                     the page: summary, one row per image, failures; a little inline JS
    <dir>/thumbs/<id>-<kind>.png         thumbnails (made once, reused while present)
    <dir>/thumbs/<id>-degraded-full.png  evaluation runs: the synthesised observation at full size

Evaluation runs store only the clean input, so the degraded view is made again with
`pipelines.evaluation.protocols.synthesise` (same synthesis, same per-image seed as the worker used); the clean input is
shown as the ground truth. No server, no CDN: open the file in a browser.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jinja2
import pyarrow as pa

from pipelines import storage
from pipelines.evaluation.benchmarks import benchmark_for
from pipelines.reporting import reports, runs

__all__ = ["HtmlReport", "render_html", "write_html_report"]

THUMB = 128  # longest side of a thumbnail, pixels
PAGE_ROWS = 50  # image rows per page
HISTORY = 50  # other runs linked from a run's page, newest first


@dataclass
class HtmlReport:
    """What `write_html_report` wrote."""

    uri: str
    rows: int
    thumbs_made: int
    thumbs_reused: int


# ------------------------------------------------------------------------------------------------ thumbnails


def _row_id(row: Mapping[str, Any]) -> str:
    ident = "\0".join(str(row.get(k) or "") for k in ("run_id", "dataset", "image_key", "input_sha256"))
    return storage.sha256_hex(ident.encode())[:20]


def _synthesis(row: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        return json.loads(row.get("config_json") or "{}").get("synthesis")
    except ValueError:
        return None


def _png(image: Any, *, thumb: bool) -> bytes:
    """PNG bytes of an H×W×C float image in [0, 1], shrunk to a `THUMB`-pixel thumbnail when `thumb`."""
    import numpy as np
    from PIL import Image

    a = np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    im = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a[..., :3])
    if thumb:
        im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _views(row: Mapping[str, Any], so: dict | None) -> dict[str, Any]:
    """kind → float image of one row: ``input`` (plain runs) or ``degraded`` + ``truth`` (evaluation), ``output``."""
    import dipcore
    from pipelines.evaluation import protocols
    from pipelines.jobs import Synthesis

    def read(uri: str) -> Any:
        return dipcore.decode_image(storage.read_bytes(uri, so), name=uri.rpartition("/")[2])

    views: dict[str, Any] = {}
    synthesis = _synthesis(row)
    if row.get("input_uri"):
        image = read(row["input_uri"])
        if synthesis is None:
            views["input"] = image
        else:  # the worker's own protocol, rebuilt from the row: same crop, same degradation, same seed
            seed = protocols.image_seed(int(row.get("seed") or 0), row["image_key"])
            obs, truth = protocols.synthesise(Synthesis(**synthesis), image, seed)
            views["degraded"], views["truth"] = getattr(obs, "image", obs), truth
    if row.get("status") == "ok" and row.get("output_uri"):
        views["output"] = read(row["output_uri"])
    return views


def _kinds(row: Mapping[str, Any]) -> list[str]:
    kinds = ["degraded", "truth"] if _synthesis(row) is not None else ["input"]
    return kinds + (["output"] if row.get("status") == "ok" and row.get("output_uri") else [])


def _make_thumbs(row: Mapping[str, Any], thumbs_dir: str, present: set[str], so: dict | None) -> tuple[int, str]:
    """Write the row's missing thumbnails; (how many were written, error message or "")."""
    rid = _row_id(row)
    wanted = [k for k in _kinds(row) if f"{rid}-{k}.png" not in present]
    if _synthesis(row) is not None and f"{rid}-degraded-full.png" not in present:
        wanted.append("degraded-full")
    if not wanted:
        return 0, ""
    try:
        views = _views(row, so)
    except Exception as exc:  # noqa: BLE001 - a missing or broken image costs its thumbnail, not the report
        return 0, storage.redact(f"{type(exc).__name__}: {exc}")
    made = 0
    for kind in wanted:
        image = views.get(kind.removesuffix("-full"))
        if image is not None:
            storage.write_bytes_atomic(
                storage.join(thumbs_dir, f"{rid}-{kind}.png"), _png(image, thumb=not kind.endswith("-full")), so
            )
            made += 1
    return made, ""


# ----------------------------------------------------------------------------------------------------- links


def _split_uri(uri: str) -> tuple[str, str]:
    """(scheme, path) with local paths as scheme ``file``."""
    if "://" in uri:
        scheme, _, path = uri.partition("://")
        return ("file", path) if scheme == "file" else (scheme, path)
    return "file", uri


def _href(target: str | None, html_dir: str) -> str | None:
    """A link from the page to `target`: relative when both are on the same store (local disk, or one bucket
    served over HTTP), else the absolute URL."""
    if not target:
        return None
    (ts, tp), (hs, hp) = _split_uri(target), _split_uri(html_dir)
    if ts == hs and (ts == "file" or tp.split("/", 1)[0] == hp.split("/", 1)[0]):
        return posixpath.relpath(tp, hp.rstrip("/") or "/")
    return target


# ---------------------------------------------------------------------------------------------------- curves


def _curve(points: list[dict[str, Any]], returned: int | None, *, w: int = 180, h: int = 54) -> dict | None:
    """The template's curve of one image: PSNR and log-loss polylines against iteration, each scaled to the w × h
    box, and the x of the returned iteration (None: no curve)."""
    if not points:
        return None
    last = max(p["iteration"] for p in points)

    def x(it: int) -> float:
        return 2 + (w - 4) * ((it - 1) / max(1, last - 1))

    def line(name: str, transform: Any) -> str | None:
        pts = [(p["iteration"], transform(p[name])) for p in points if p.get(name) is not None]
        pts = [(i, v) for i, v in pts if v is not None and math.isfinite(v)]
        if not pts:
            return None
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)

        def y(v: float) -> float:  # a flat curve is drawn at mid-height
            return h - 2 - (h - 4) * ((v - lo) / (hi - lo) if hi > lo else 0.5)

        return " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts)

    def log(v: float) -> float | None:
        return math.log10(v) if v > 0 else None

    lines = [(cls, pts) for cls, pts in (("loss", line("loss", log)), ("psnr", line("psnr", float))) if pts]
    mark = f"{x(returned):.1f}" if returned else None
    return {"w": w, "h": h, "last": last, "returned": returned, "lines": lines, "mark": mark}


# ------------------------------------------------------------------------------------------------------ page


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _num(v: Any) -> str:
    """A cell's sort value (``data-v``): empty where there is no number."""
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "–"


# Autoescaped whatever the template's name ends with (select_autoescape would go by ".html" and miss ".html.j2").
_PAGE = jinja2.Environment(
    loader=jinja2.PackageLoader("pipelines.reporting", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_PAGE.filters.update(fmt=_fmt, num=_num, when=_when)


def _summary(view: pa.Table) -> list[dict[str, Any]]:
    """`reports.summarize`'s rows with what the page adds to each: the paper's figures, the settings and hardware."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in view.to_pylist():
        groups[(r["dataset"], r["task"], r["scale"])].append(r)
    out = []
    for s in reports.summarize(view).to_pylist():
        group = groups[(s["dataset"], s["task"], s["scale"])]
        benchmark = benchmark_for(s["dataset"], s["task"], s["scale"])
        paper = benchmark.paper if benchmark else None
        baselines = {r["baseline_name"] for r in group if r["baseline_name"]}
        paper_baseline = paper.baseline(baselines.pop()) if paper and len(baselines) == 1 else None
        configs = Counter(r["config_json"] for r in group if r["config_json"])
        devices = Counter(r["device"] for r in group if r["device"])
        out.append(
            {
                **s,
                "task": f"{s['task']} ×{s['scale']}" if s["scale"] else s["task"],
                "paper_note": paper.note if paper else "",
                "paper_psnr": paper.psnr if paper else None,
                "paper_baseline_psnr": paper_baseline.psnr if paper_baseline else None,
                "settings": [
                    {"line": _settings_line(c), "images": n, "pretty": json.dumps(json.loads(c), indent=1)}
                    for c, n in configs.most_common()
                ],
                "hardware": ", ".join(f"{d} ×{n}" for d, n in devices.most_common()),
                "nodes": len({r["ray_node"] for r in group if r["ray_node"]}),
            }
        )
    return out


def _settings_line(config_json: str) -> str:
    c = json.loads(config_json)
    keys = ("net", "iterations", "lr", "input_depth", "early_stopping", "output", "seed")
    line = " ".join(f"{k}={c[k]}" for k in keys if c.get(k) is not None)
    syn = c.get("synthesis")
    if syn:
        line += f" synthesis={syn.get('task')}"
    return line


def _history(history: pa.Table, run_id: str, output_root: str, html_dir: str) -> tuple[list[dict[str, Any]], int]:
    """Every run of the runs table, newest first (at most `HISTORY`), with a link to its page if it has one; and how
    many older runs are left out.

    A run has a page when it ran as a Prefect flow run (the flow writes ``html/run_id=<run>/index.html`` for each,
    best effort): its ``flow_run_id`` says so without listing the html folder, whose thumbnails grow with every run.
    A page that failed to be written is still linked (the flow logged why)."""
    by_run: dict[str, dict[str, Any]] = {}
    for r in history.to_pylist():  # oldest first
        run = by_run.setdefault(
            r["run_id"], {**r, "ok": 0, "errors": 0, "done_earlier": 0, "page": False, "datasets": 0}
        )
        for k in ("ok", "errors", "done_earlier"):
            run[k] += r[k]
        run["page"] |= r["flow_run_id"] is not None
        run["datasets"] += 1
    newest = list(reversed(by_run.values()))
    for run in newest[:HISTORY]:
        run["this"] = run["run_id"] == run_id
        run["href"] = None
        if run["page"] and not run["this"]:
            page = storage.join(output_root, "html", f"run_id={run['run_id']}", "index.html")
            run["href"] = storage.redact(_href(page, html_dir) or "")
    return newest[:HISTORY], max(0, len(newest) - HISTORY)


def _thumb(rid: str, kind: str, href: str | None, present: set[str], alt: str) -> dict[str, Any] | None:
    name = f"{rid}-{kind}.png"
    return {"name": name, "href": href, "alt": alt} if name in present else None


def _image_rows(view: pa.Table, curves: dict, present: set[str], html_dir: str, thumb_errors: dict) -> list[dict]:
    """The report rows with what the page shows beside each: thumbnails (None: not made), its curve."""
    out = []
    for r in view.to_pylist():
        rid = _row_id(r)
        in_href = _href(r["input_uri"], html_dir)
        if _synthesis(r) is not None:
            first = _thumb(rid, "degraded", f"thumbs/{rid}-degraded-full.png", present, "degraded input")
            truth = _thumb(rid, "truth", in_href, present, "ground truth")
        else:
            first, truth = _thumb(rid, "input", in_href, present, "input"), None
        out.append(
            {
                **r,
                "first": first,
                "restored": _thumb(rid, "output", _href(r["output_uri"], html_dir), present, "restoration"),
                "truth": truth,
                "thumb_error": thumb_errors.get(rid),
                "curve": _curve(curves.get((r["run_id"], r["dataset"], r["image_key"]), []), r["iteration_returned"]),
            }
        )
    return out


def render_html(
    view: pa.Table,
    curves: pa.Table,
    html_dir: str,
    present: set[str],
    *,
    title: str,
    thumb_errors: dict | None = None,
    history: pa.Table | None = None,
    run_id: str = "",
    output_root: str = "",
) -> str:
    """The page for the report rows `view` (one row per image), with `curves` and the thumbnail names `present`.
    With the runs table `history`, the page of run `run_id` of `output_root`: its rows of that table, then the
    other runs linked, before the rows' summary."""
    by_image: dict[tuple, list[dict]] = defaultdict(list)
    for c in curves.to_pylist():
        by_image[(c["run_id"], c["dataset"], c["image_key"])].append(c)
    for pts in by_image.values():
        pts.sort(key=lambda p: p["iteration"])
    run = None
    if history is not None:
        newest, older = _history(history, run_id, output_root, html_dir)
        mine = [r for r in history.to_pylist() if r["run_id"] == run_id]
        run = {"rows": mine, "history": newest, "older": older}
    rows = _image_rows(view, by_image, present, html_dir, thumb_errors or {})
    return _PAGE.get_template("report.html.j2").render(
        title=title,
        runs=", ".join(sorted(set(view.column("run_id").to_pylist()))),
        run=run,
        summary=_summary(view) if view.num_rows else [],
        rows=rows,
        failed=[r for r in rows if r["status"] == "error"],
        page_rows=PAGE_ROWS,
    )


def write_html_report(
    output_root: str, html_uri: str, *, run_id: str | None = None, storage_options: dict | None = None, threads: int = 8
) -> HtmlReport:
    """Write the page for the runs under `output_root` (one run, or the latest row of every image) to `html_uri`
    (any fsspec URL) with its thumbnails beside it; thumbnails already there are reused, not made again. One run's
    page also shows its rows of the runs table and links the other runs' pages: it renders for a run that found
    nothing new (no report rows); `ValueError` when there is neither a row nor a runs-table row to show."""
    so = storage_options
    table = reports.read_report(output_root, so, run_id=run_id)  # one run's: only its folder is listed and read
    history = runs.read_runs(output_root, so) if run_id else None
    mine = [r for r in history.to_pylist() if r["run_id"] == run_id] if history is not None else []
    if table.num_rows == 0 and not mine:
        raise ValueError(
            f"no report rows under {storage.redact(output_root)}"
            + (f" and no run {run_id} in its runs table" if run_id else "")
        )
    view = table if run_id else reports.latest_rows(table)
    html_dir = html_uri.rstrip("/").rpartition("/")[0] or "."
    thumbs_dir = storage.join(html_dir, "thumbs")
    rows = view.to_pylist()
    present: set[str] = set()
    made = reused = 0
    thumb_errors: dict[str, str] = {}
    curves = reports.CURVES_SCHEMA.empty_table()
    if rows:  # a run that restored nothing new has neither thumbnails nor curves to read
        present = {u.rpartition("/")[2] for u in storage.list_files(thumbs_dir, so, suffix=".png")}
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # reads and PNG coding wait on I/O and zlib
            results = list(pool.map(lambda r: _make_thumbs(r, thumbs_dir, present, so), rows))
        made = sum(m for m, _ in results)
        thumb_errors = {_row_id(r): e for r, (_, e) in zip(rows, results, strict=True) if e}
        reused = len(present)
        present = {u.rpartition("/")[2] for u in storage.list_files(thumbs_dir, so, suffix=".png")}
        curves = reports.read_curves(output_root, so, run_id=run_id)
    title = f"dipflow report — {storage.redact(output_root)}" + (f" (run {run_id})" if run_id else "")
    page = render_html(
        view,
        curves,
        html_dir,
        present,
        title=title,
        thumb_errors=thumb_errors,
        history=history,
        run_id=run_id or "",
        output_root=output_root,
    )
    storage.write_bytes_atomic(html_uri, page.encode("utf-8"), so)
    return HtmlReport(uri=storage.redact(html_uri), rows=view.num_rows, thumbs_made=made, thumbs_reused=reused)
