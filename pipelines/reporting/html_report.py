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

import html
import io
import json
import math
import posixpath
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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


def _curve_svg(points: list[dict[str, Any]], returned: int | None, *, w: int = 180, h: int = 54) -> str:
    """PSNR (blue) and log-loss (grey) against iteration as SVG polylines, each scaled to the box; a red line at
    the returned iteration."""
    if not points:
        return "–"
    last = max(p["iteration"] for p in points)

    def x(it: int) -> float:
        return 2 + (w - 4) * ((it - 1) / max(1, last - 1))

    def line(name: str, transform: Any, cls: str) -> str:
        pts = [(p["iteration"], transform(p[name])) for p in points if p.get(name) is not None]
        pts = [(i, v) for i, v in pts if v is not None and math.isfinite(v)]
        if not pts:
            return ""
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)

        def y(v: float) -> float:  # a flat curve is drawn at mid-height
            return h - 2 - (h - 4) * ((v - lo) / (hi - lo) if hi > lo else 0.5)

        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts)
        return f'<polyline class="{cls}" points="{coords}"/>'

    def log(v: float) -> float | None:
        return math.log10(v) if v > 0 else None

    mark = ""
    if returned:
        mark = f'<line class="ret" x1="{x(returned):.1f}" x2="{x(returned):.1f}" y1="0" y2="{h}"/>'
    return (
        f'<svg class="curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><title>PSNR (blue), log loss '
        f"(grey); returned iteration {returned} of {last}</title>{line('loss', log, 'loss')}"
        f"{line('psnr', float, 'psnr')}{mark}</svg>"
    )


# ------------------------------------------------------------------------------------------------------ page


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _summary_html(view: pa.Table) -> str:
    rows = view.to_pylist()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["task"], r["scale"])].append(r)
    out = [
        "<table class='summary'><tr><th>dataset</th><th>task</th><th>images</th><th>ok</th><th>errors</th>"
        "<th>PSNR</th><th>baseline PSNR</th><th>paper PSNR</th><th>paper baseline</th><th>SSIM</th>"
        "<th>settings</th><th>hardware</th><th>wall s</th></tr>"
    ]
    for s in reports.summarize(view).to_pylist():
        group = groups[(s["dataset"], s["task"], s["scale"])]
        benchmark = benchmark_for(s["dataset"], s["task"], s["scale"])
        paper = benchmark.paper if benchmark else None
        baselines = {r["baseline_name"] for r in group if r["baseline_name"]}
        paper_baseline = paper.baseline(baselines.pop()) if paper and len(baselines) == 1 else None
        configs = Counter(r["config_json"] for r in group if r["config_json"])
        settings = "".join(
            f"<details><summary>{html.escape(_settings_line(c))} ({n} images)</summary><pre>"
            f"{html.escape(json.dumps(json.loads(c), indent=1))}</pre></details>"
            for c, n in configs.most_common()
        )
        devices = Counter(r["device"] for r in group if r["device"])
        nodes = len({r["ray_node"] for r in group if r["ray_node"]})
        hardware = ", ".join(f"{html.escape(d)} ×{n}" for d, n in devices.most_common()) or "–"
        task = f"{s['task']} ×{s['scale']}" if s["scale"] else s["task"]
        out.append(
            f"<tr><td>{html.escape(s['dataset'])}</td><td>{html.escape(task)}</td><td>{s['images']}</td>"
            f"<td>{s['ok']}</td><td>{s['errors']}</td><td>{_fmt(s['psnr'])}</td><td>{_fmt(s['psnr_baseline'])}</td>"
            f"<td title='{html.escape(paper.note) if paper else ''}'>{_fmt(paper.psnr if paper else None)}</td>"
            f"<td>{_fmt(paper_baseline.psnr if paper_baseline else None)}</td><td>{_fmt(s['ssim'], 4)}</td>"
            f"<td>{settings or '–'}</td><td>{hardware}{f' on {nodes} node(s)' if nodes else ''}</td>"
            f"<td>{_fmt(s['total_wall_seconds'], 1)}</td></tr>"
        )
    return "\n".join(out) + "</table>"


def _settings_line(config_json: str) -> str:
    c = json.loads(config_json)
    keys = ("net", "iterations", "lr", "input_depth", "early_stopping", "output", "seed")
    line = " ".join(f"{k}={c[k]}" for k in keys if c.get(k) is not None)
    syn = c.get("synthesis")
    if syn:
        line += f" synthesis={syn.get('task')}"
    return line


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "–"


def _run_summary_html(mine: list[dict[str, Any]]) -> str:
    """The run's rows of the runs table, one per dataset: what it listed and what became of each image — the whole
    story of a run that found nothing new, which has no image row."""
    if not mine:
        return "<p>This run has no row in the runs table (a run before report version 3, or its summary was lost).</p>"
    header = [
        "dataset",
        "task",
        "outcome",
        "listed",
        "restored",
        "failed",
        "done by earlier runs",
        "not restored",
        "not images",
        "started",
        "seconds",
        "s to first dispatch",
    ]
    out = ["<table id='run'><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for r in mine:
        outcome = html.escape(r["outcome"])
        if r["error"]:
            outcome += f"<br><span class='err'>{html.escape(r['error'])}</span>"
        cells = [
            html.escape(r["dataset"]),
            html.escape(r["task"]),
            outcome,
            *(_fmt(r[k]) for k in ("listed", "ok", "errors", "done_earlier", "not_restored", "not_images")),
            _when(r["started_at"]),
            _fmt(r["seconds"], 1),
            _fmt(r["seconds_to_first_dispatch"], 1),
        ]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _history_html(history: pa.Table, run_id: str, output_root: str, html_dir: str) -> str:
    """Every run of the runs table, newest first (at most `HISTORY`), linked to its page if it has one.

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
    out = [
        "<table id='history'><tr><th>run</th><th>started</th><th>outcome</th><th>datasets</th><th>restored</th>"
        "<th>failed</th><th>done by earlier runs</th></tr>"
    ]
    for run in newest[:HISTORY]:
        name = html.escape(run["run_id"])
        if run["run_id"] == run_id:
            name = f"<b>{name}</b> (this page)"
        elif run["page"]:
            href = _href(storage.join(output_root, "html", f"run_id={run['run_id']}", "index.html"), html_dir)
            name = f'<a href="{html.escape(storage.redact(href or ""))}">{name}</a>'
        cells = [
            name,
            _when(run["started_at"]),
            html.escape(run["outcome"]),
            *(_fmt(run[k]) for k in ("datasets", "ok", "errors", "done_earlier")),
        ]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    more = len(newest) - HISTORY
    tail = f"<p>… and {more} older run(s), not listed.</p>" if more > 0 else ""
    return "\n".join(out) + "</table>" + tail


def _thumb_cell(rid: str, kind: str, href: str | None, present: set[str], alt: str) -> str:
    name = f"{rid}-{kind}.png"
    if name not in present:
        return "<td>–</td>"
    img = f'<img class="thumb" src="thumbs/{name}" loading="lazy" alt="{html.escape(alt)}">'
    return f'<td><a href="{html.escape(href)}">{img}</a></td>' if href else f"<td>{img}</td>"


def _image_rows(view: pa.Table, curves: dict, present: set[str], html_dir: str, thumb_errors: dict) -> str:
    out = []
    for n, r in enumerate(view.to_pylist()):
        rid = _row_id(r)
        evaluation = _synthesis(r) is not None
        out_href = _href(r["output_uri"], html_dir)
        in_href = _href(r["input_uri"], html_dir)
        if evaluation:
            first = _thumb_cell(rid, "degraded", f"thumbs/{rid}-degraded-full.png", present, "degraded input")
            truth = _thumb_cell(rid, "truth", in_href, present, "ground truth")
        else:
            first, truth = _thumb_cell(rid, "input", in_href, present, "input"), "<td>–</td>"
        why = r["stop_reason"] or ""
        if r["status"] != "ok":
            why = f"<span class='err'>{html.escape(r['status'])}: {html.escape(r['error'] or '')}</span>"
        elif thumb_errors.get(rid):
            why += f" <span class='err'>(thumbnail: {html.escape(thumb_errors[rid])})</span>"
        it = f"{_fmt(r['iteration_returned'])} / {_fmt(r['iterations_run'])}"
        curve = _curve_svg(curves.get((r["run_id"], r["dataset"], r["image_key"]), []), r["iteration_returned"])
        cells = [
            f"<td data-v='{n}'>{n + 1}</td>",
            f"<td>{html.escape(r['dataset'])}</td>",
            f"<td>{html.escape(r['image_key'])}</td>",
            f"<td>{html.escape(r['status'])}</td>",
            first,
            _thumb_cell(rid, "output", out_href, present, "restoration"),
            truth,
            f"<td data-v='{_num(r['psnr'])}'>{_fmt(r['psnr'])}</td>",
            f"<td data-v='{_num(r['psnr_baseline'])}'>{_fmt(r['psnr_baseline'])}</td>",
            f"<td data-v='{_num(r['ssim'])}'>{_fmt(r['ssim'], 4)}</td>",
            f"<td data-v='{_num(r['iteration_returned'])}'>{it}</td>",
            f"<td>{why}</td>",
            f"<td>{curve}</td>",
            f"<td data-v='{_num(r['wall_seconds'])}'>{_fmt(r['wall_seconds'], 1)}</td>",
        ]
        out.append(f"<tr class='{html.escape(r['status'])}'>{''.join(cells)}</tr>")
    return "\n".join(out)


def _num(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:middle;text-align:left}th{background:#f4f4f4}
#images th{cursor:pointer}img.thumb{height:96px;image-rendering:pixelated}tr.error{background:#fff3f3}
.err{color:#b00}svg.curve polyline{fill:none;stroke-width:1.2}polyline.psnr{stroke:#1565c0}
polyline.loss{stroke:#999}line.ret{stroke:#d00;stroke-dasharray:2 2}pre{font-size:11px;max-height:20em;overflow:auto}
"""

# Pagination and sorting; with ?check in the URL (the browser test) it also records in <body> whether every
# thumbnail of the page shown loaded, how many rows there are and how many curves were drawn.
_JS = """
(function(){
const tb=document.querySelector('#images tbody');let rows=[...tb.rows],page=0,dir={};const per=PAGE_ROWS;
const pages=()=>Math.max(1,Math.ceil(rows.length/per));
function show(){rows.forEach((r,i)=>{r.style.display=Math.floor(i/per)===page?'':'none'});
 document.getElementById('pageinfo').textContent='page '+(page+1)+' of '+pages()+' ('+rows.length+' images)';}
document.getElementById('prev').onclick=()=>{if(page>0){page--;show();}};
document.getElementById('next').onclick=()=>{if(page<pages()-1){page++;show();}};
document.querySelectorAll('#images th').forEach((th,c)=>th.onclick=()=>{
 const s=dir[c]=-(dir[c]||-1),key=r=>{const d=r.cells[c];const v=d.dataset.v!==undefined?d.dataset.v:d.textContent;
  const f=parseFloat(v);return v!==''&&!isNaN(f)?f:v;};
 rows.sort((a,b)=>{const x=key(a),y=key(b);if(x===y)return 0;if(x===''||y==='')return x===''?1:-1;
  return (x<y?-1:1)*s;});tb.append(...rows);page=0;show();});
show();
if(location.search.indexOf('check')<0)return;
const imgs=[...tb.querySelectorAll('img')].filter(i=>i.closest('tr').style.display!=='none');
imgs.forEach(i=>i.loading='eager');const t0=Date.now();
(function poll(){const done=imgs.filter(i=>i.complete);
 if(done.length<imgs.length&&Date.now()-t0<8000){setTimeout(poll,50);return;}
 const b=document.body.dataset;b.thumbsTotal=imgs.length;
 b.thumbsLoaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
 b.rows=rows.length;b.curves=[...document.querySelectorAll('svg.curve polyline')].filter(p=>p.points.length>1).length;
 b.checked='1';})();
})();
""".replace("PAGE_ROWS", str(PAGE_ROWS))


def render_html(
    view: pa.Table,
    curves: pa.Table,
    html_dir: str,
    present: set[str],
    *,
    title: str,
    thumb_errors: dict | None = None,
    sections: str = "",
) -> str:
    """The page for the report rows `view` (one row per image), with `curves` and the thumbnail names `present`;
    `sections` (HTML: a run's summary and history) go before the rows' summary."""
    by_image: dict[tuple, list[dict]] = defaultdict(list)
    for c in curves.to_pylist():
        by_image[(c["run_id"], c["dataset"], c["image_key"])].append(c)
    for pts in by_image.values():
        pts.sort(key=lambda p: p["iteration"])
    failed = [r for r in view.to_pylist() if r["status"] == "error"]
    failures = "".join(
        f"<li><b>{html.escape(r['dataset'])}/{html.escape(r['image_key'])}</b>: "
        f"<span class='err'>{html.escape(r['error'] or '')}</span></li>"
        for r in failed
    )
    header = [
        "#",
        "dataset",
        "image",
        "status",
        "degraded / input",
        "restoration",
        "ground truth",
        "PSNR",
        "baseline",
        "SSIM",
        "iteration returned",
        "why",
        "curve",
        "wall s",
    ]
    runs = ", ".join(sorted(set(view.column("run_id").to_pylist())))
    summary = _summary_html(view) if view.num_rows else "<p>No image was restored or failed: no report rows.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>{f"<p>runs: {html.escape(runs)}</p>" if runs else ""}
{sections}<h2>Summary</h2>{summary}
<h2>Images</h2><p><button id="prev">◀</button> <span id="pageinfo"></span> <button id="next">▶</button>
 — click a column to sort, a thumbnail for the full-size image;
 curves: PSNR blue, log loss grey, returned iteration red.</p>
<table id="images"><thead><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr></thead>
<tbody>{_image_rows(view, by_image, present, html_dir, thumb_errors or {})}</tbody></table>
<h2>Failed images ({len(failed)})</h2><ul id="failures">{failures or "<li>none</li>"}</ul>
<script>{_JS}</script></body></html>
"""


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
    sections = ""
    if history is not None:
        sections = (
            f"<h2>This run</h2>{_run_summary_html(mine)}"
            f"<h2>History</h2>{_history_html(history, run_id or '', output_root, html_dir)}"
        )
    title = f"dipflow report — {storage.redact(output_root)}" + (f" (run {run_id})" if run_id else "")
    page = render_html(view, curves, html_dir, present, title=title, thumb_errors=thumb_errors, sections=sections)
    storage.write_bytes_atomic(html_uri, page.encode("utf-8"), so)
    return HtmlReport(uri=storage.redact(html_uri), rows=view.num_rows, thumbs_made=made, thumbs_reused=reused)
