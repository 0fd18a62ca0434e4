"""What the pipeline costs on top of dipcore, and what the driver holds in memory (not a test; prints figures).

1. Overhead per image: the same N tiny jobs (16×16 px, 1 iteration, 8-channel net) restored
   a) by ``dipcore.restore`` in a plain loop over decoded arrays (torch on 1 thread),
   b) by the driver loop on one Ray actor with 1 CPU (plan with content hashes, read, decode, restore, encode,
      atomic write, metrics row, Parquet report row per image) — pool start-up counted separately,
   c) by the whole ``restore_dataset`` Prefect flow on one actor (Prefect's test server and Ray already up).
2. The driver's peak Python memory (tracemalloc) and its max RSS while planning and running 100 vs 2,000 jobs on
   two actors, with the report written as in the flow.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--jobs 200] [--memory-jobs 100 2000]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import dipcore
from pipelines import jobs
from pipelines.execution import workers
from pipelines.reporting import reports
from pipelines.settings import RestoreSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import planned_jobs

SIZE, ITERATIONS, CHANNELS = 16, 1, 8
SETTINGS = {"task": "denoise", "preset": "fast", "iterations": ITERATIONS, "channels": CHANNELS}


def make_dataset(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.random((SIZE, SIZE, 3), dtype=np.float32)
        (folder / f"{i // 100:03d}").mkdir(parents=True, exist_ok=True)
        (folder / f"{i // 100:03d}" / f"im{i:05d}.png").write_bytes(dipcore.encode_png(image))


def plain_loop(folder: Path) -> tuple[float, int]:
    import torch

    torch.set_num_threads(1)  # as the one-CPU actor
    images = [dipcore.load_image(p) for p in sorted(folder.rglob("*.png"))]
    dipcore.restore(images[0], task="denoise", preset="fast", iterations=1, channels=CHANNELS)  # warm-up
    started = time.perf_counter()
    for image in images:
        dipcore.restore(image, task="denoise", preset="fast", iterations=ITERATIONS, channels=CHANNELS)
    return time.perf_counter() - started, len(images)


def driver_run(folder: Path, output: Path, *, n_workers: int) -> dict[str, float]:
    """Plan + run on Ray + write the report, as the flow does without Prefect; times start-up apart."""
    started = time.perf_counter()
    config = jobs.restore_config(RestoreSettings(**SETTINGS))
    todo = planned_jobs(str(folder), output=str(output), config=config)
    planned = time.perf_counter()
    pool = workers.WorkerPool(n_workers, num_cpus=1)
    first: list[float] = []
    with reports.ReportWriter(str(output), "bench") as writer:

        def on_result(outcome: workers.JobOutcome) -> None:
            if not first:
                first.append(time.perf_counter())
            writer.append(outcome.row, outcome.curves)

        try:
            stats = workers.run_jobs(todo, workers=pool, on_result=on_result)
        finally:
            pool.shutdown()
    done = time.perf_counter()
    assert stats.ok == len(todo), stats
    return {
        "plan": planned - started,
        "startup": first[0] - planned,
        "run": done - first[0],
        "total": done - started,
        "n": len(todo),
    }


def flow_run(folder: Path, output: Path) -> float:
    from pipelines import flows

    started = time.perf_counter()
    summary = flows.restore_dataset(str(folder), str(output), SETTINGS, execution={"num_workers": 1})
    assert summary["ok"] == summary["images"], summary["failures"][:3]
    return time.perf_counter() - started


def memory(folder: Path, output: Path) -> tuple[float, float]:
    tracemalloc.start()
    driver_run(folder, output, n_workers=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--memory-jobs", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--skip-flow", action="store_true", help="skip the Prefect flow measurement")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    data = root / "data"
    make_dataset(data, args.jobs)
    workers.start_ray(num_cpus=2)
    print(
        f"{args.jobs} jobs of {SIZE}×{SIZE} px, {ITERATIONS} iteration(s), {CHANNELS}-channel net, on "
        f"{os.cpu_count()} CPU core(s); load average {os.getloadavg()[0]:.1f}"
    )

    loop_s, n = plain_loop(data)
    print(f"plain dipcore.restore loop (1 thread):  {loop_s:7.2f} s  = {1000 * loop_s / n:7.1f} ms/image")
    d = driver_run(data, root / "out-driver", n_workers=1)
    per = 1000 * d["run"] / n
    print(
        f"driver loop, 1 actor x 1 CPU:            {d['run']:7.2f} s  = {per:7.1f} ms/image "
        f"(+{per - 1000 * loop_s / n:.1f} ms/image over the plain loop); "
        f"planning {d['plan']:.2f} s, actor start-up {d['startup']:.2f} s"
    )
    if not args.skip_flow:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            f = flow_run(data, root / "out-flow")
        print(
            f"restore_dataset flow, 1 actor:           {f:7.2f} s  = {1000 * f / n:7.1f} ms/image, all included "
            f"(+{1000 * (f - loop_s) / n:.1f} ms/image over the plain loop)"
        )

    for m in args.memory_jobs:
        folder = root / f"mem{m}"
        make_dataset(folder, m)
        peak, rss = memory(folder, root / f"out-mem{m}")
        print(
            f"driver, {m:5d} jobs on 2 actors: peak traced Python memory {peak:7.1f} MiB, max RSS so far {rss:7.0f} MiB"
        )
    print(f"(scratch data in {root})", file=sys.stderr)


if __name__ == "__main__":
    main()
