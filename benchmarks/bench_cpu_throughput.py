"""Images per hour of a whole run on a CPU, against the plain loop (not a test; prints figures).

`bench_fit.py` measures dipcore's fits side by side. This checks that a run gets the same from end to end, with
reading, writing and report rows included. The same N images are restored in three ways:

- ``plain``: ``dipcore.restore`` on one image after another, on all cores, with the published loop's engine
  (``bench_fit.PLAIN``: looped Adam, a host read every iteration);
- ``inline``: ``pipelines.execution.workers.run_inline`` on one `Restorer` with all cores and ``pack="auto"``, so
  the jobs run side by side on its threads (``dipcore.concurrent``);
- ``pipeline``: ``pipelines.execution.workers.run_jobs`` on the default CPU pool, one one-CPU Ray actor per core. The
  pool is started and warmed up before any timing.

Every way runs ``--rounds`` times, interleaved, because this machine's timings drift by tens of percent from one
minute to the next. One JSON line per run, then the medians.

    PYTHONPATH=. python3 benchmarks/bench_cpu_throughput.py --rounds 3 \
        --out benchmarks/results/<date>-cpu/cpu_throughput.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np
import torch

import dipcore
from pipelines import jobs
from pipelines.execution import workers
from pipelines.execution.restorer import Restorer
from pipelines.settings import RestoreSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import PLAIN, cpu_facts, emit
from bench_plan import planned_jobs

WAYS = ("plain", "inline", "pipeline")


def make_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"im{i:03d}.png").write_bytes(dipcore.encode_png(rng.random((size, size, 3), dtype=np.float32)))


def plan(folder: Path, output: Path, iterations: int, **settings) -> list[jobs.Job]:
    config = jobs.restore_config(RestoreSettings(task="denoise", iterations=iterations, **settings))
    return planned_jobs(str(folder), output=str(output), config=config)


def run_plain(folder: Path, iterations: int, threads: int) -> int:
    torch.set_num_threads(threads)
    images = [dipcore.load_image(p) for p in sorted(folder.glob("*.png"))]
    for image in images:
        dipcore.restore(image, task="denoise", iterations=iterations, engine=PLAIN)
    return len(images)


def run_inline(job_list: list[jobs.Job], threads: int) -> int:
    stats = workers.run_inline(job_list, restorer=Restorer(device="cpu", threads=threads), on_result=_check)
    return stats.ok


def run_pipeline(job_list: list[jobs.Job], pool: workers.WorkerPool) -> int:
    return workers.run_jobs(job_list, workers=pool, on_result=_check).ok


def _check(outcome: workers.JobOutcome) -> None:
    if outcome.row.get("status") != "ok":
        raise RuntimeError(f"a job failed: {outcome.row.get('error')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=15, help="per image, default net (the preset's own width)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="bench-cpu-throughput-"))
    data = root / "data"
    make_images(data, args.images, args.size)
    pool = None
    if "pipeline" in args.ways:
        workers.start_ray(num_cpus=cores)
        pool = workers.WorkerPool(cores, num_cpus=1)
        warm = root / "warm"
        make_images(warm, cores, 16)  # starts every actor and pays its imports before any timing
        run_pipeline(plan(warm, root / "out-warm", 1, preset="fast", channels=8), pool)
    tiny = np.zeros((16, 16, 3), np.float32)
    for engine in (PLAIN, None):  # this process's first fits pay lazy imports and initialisation: not timed
        dipcore.restore(tiny, task="denoise", preset="fast", channels=8, iterations=2, engine=engine)
    common = {
        "images": args.images,
        "size": args.size,
        "iterations": args.iterations,
        "cores": cores,
        "torch": torch.__version__,
        "task": "denoise",
        "net": "default",
        **cpu_facts(),  # inline and pipeline run dipcore's default precision: bf16 where native_bf16 says so
    }
    seconds: dict[str, list[float]] = {way: [] for way in args.ways}
    try:
        for round_ in range(1, args.rounds + 1):
            for way in args.ways:
                out = root / f"out-{way}-{round_}"  # a fresh output folder: nothing is skipped as done
                job_list = plan(data, out, args.iterations) if way != "plain" else None
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                if way == "plain":
                    done = run_plain(data, args.iterations, cores)
                elif way == "inline":
                    done = run_inline(job_list, cores)
                else:
                    done = run_pipeline(job_list, pool)
                dt = time.perf_counter() - t0
                assert done == args.images, (way, done)
                seconds[way].append(dt)
                emit(
                    {
                        **common,
                        "way": way,
                        "round": round_,
                        "seconds": dt,
                        "load_average": load,
                        "images_per_hour_at_2000_iterations": 3600 * args.images * args.iterations / 2000 / dt,
                    },
                    args.out,
                )
    finally:
        if pool is not None:
            pool.shutdown()
    plain = seconds.get("plain")
    for way, times in seconds.items():
        line = f"{way:9s} median {statistics.median(times):7.1f} s over {len(times)} round(s)"
        if plain and way != "plain":
            ratios = [p / t for p, t in zip(plain, times, strict=True)]
            line += f"; vs plain: median {statistics.median(ratios):.2f}× (range {min(ratios):.2f}–{max(ratios):.2f})"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
