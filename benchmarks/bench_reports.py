"""What a report costs to write and to read, row-by-row parts against buffered and compacted ones (not a test).

Writes `--rows` report rows of one run through `pipelines.reporting.reports.ReportWriter` into a fresh local folder,
twice:
  a) as before issue 12's item 4: one part per row (``flush_every=1``), no compaction;
  b) as now: the defaults (a part every 256 rows or 30 s, whichever first) and compaction at close.
For each it prints the Parquet files left and their bytes, the write time (validation, encoding and the atomic
writes, `close` and its compaction included), and the time of the readers: `read_report` (every column), the view
``dipflow report`` prints (`read_report`, `latest_rows`, `summarize`) and `completed_keys` (what resume reads).
Rows look like a flow's: a config JSON of some hundred bytes, the engine JSON, scores and timestamps.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_reports.py [--rows 100000] [--before-rows 10000]``;
``--before-rows`` bounds (a), which writes one file per row.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines import jobs
from pipelines.reporting import reports

CONFIG = jobs.canonical_json(
    {
        "task": "denoise",
        "preset": "fast",
        "iterations": 2,
        "channels": 8,
        "lr": 0.01,
        "net": "skip",
        "reg_noise_std": 0.0333,
        "input_depth": 32,
        "ema": 0.99,
        "restarts": 1,
        "early_stopping": False,
        "seed": 0,
        "psnr_protocol": {"y_channel": False, "shave": 0, "crop": None},
    }
)
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def make_row(i: int) -> dict:
    return {
        "flow_run_id": "5b0a1c2e-0000-4000-8000-000000000000",
        "dataset": "s3://photos/2026",
        "image_key": f"{i // 1000:04d}/img{i:07d}.png",
        "input_uri": f"s3://photos/2026/{i // 1000:04d}/img{i:07d}.png",
        "input_sha256": f"{i:064x}",
        "task": "denoise",
        "config_hash": jobs.config_hash({"c": CONFIG}),
        "config_json": CONFIG,
        "seed": 0,
        "iterations_run": 2,
        "iteration_returned": 2,
        "stop_reason": "iterations",
        "psnr": 25.0 + (i % 97) / 10,
        "psnr_average": 25.1,
        "psnr_final": 25.0,
        "height": 16,
        "width": 16,
        "wall_seconds": 0.05 + (i % 13) / 100,
        "device": "cpu",
        "attempts": 1,
        "status": "ok" if i % 50 else "error",
        "error": None if i % 50 else "decode failed",
        "output_uri": f"s3://restored/2026/{i // 1000:04d}/img{i:07d}.png",
        "started_at": T0 + timedelta(seconds=i),
        "finished_at": T0 + timedelta(seconds=i + 1),
        "torch_version": "2.13.0+cpu",
        "engine_json": '{"autocast":"off","channels_last":false,"cuda_graphs":false}',
        "pack_size": 1,
    }


def files_and_bytes(root: Path) -> tuple[int, int]:
    files = list(root.rglob("*.parquet"))
    return len(files), sum(p.stat().st_size for p in files)


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def measure(label: str, n: int, **writer_kw) -> dict:
    rows = [make_row(i) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        out = str(Path(tmp) / "out")

        def write() -> None:
            with reports.ReportWriter(out, "bench", **writer_kw) as writer:
                for r in rows:
                    writer.append(r)

        write_s, _ = timed(write)
        files, size = files_and_bytes(Path(out))
        read_s, table = timed(lambda: reports.read_report(out))
        assert table.num_rows == n, table.num_rows
        view_s, _ = timed(lambda: reports.summarize(reports.latest_rows(reports.read_report(out))))
        keys_s, keys = timed(lambda: reports.completed_keys(out))
        assert len(keys) == sum(1 for r in rows if r["status"] == "ok")
    return {
        "label": label,
        "rows": n,
        "files": files,
        "bytes": size,
        "write": write_s,
        "read": read_s,
        "view": view_s,
        "keys": keys_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--before-rows", type=int, default=10_000, help="rows for the one-part-per-row layout")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"report rows of one run, local disk, {os.cpu_count()} CPU core(s); load average {load:.1f}")
    results = [
        measure("before: a part per row", min(args.before_rows, args.rows), flush_every=1, compact=False),
        measure("now: 256 rows / 30 s, compacted", args.rows),
    ]
    header = "| layout | rows | files | MB | write s | µs/row | read_report s | report view s | completed_keys s |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['label']} | {r['rows']:,} | {r['files']:,} | {r['bytes'] / 1e6:.2f} | {r['write']:.1f} | "
            f"{r['write'] / r['rows'] * 1e6:.0f} | {r['read']:.2f} | {r['view']:.2f} | {r['keys']:.2f} |"
        )


if __name__ == "__main__":
    main()
