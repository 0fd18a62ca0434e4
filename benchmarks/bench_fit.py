"""Speed of one DIP fit: ms/iteration, images/hour, peak memory and achieved TFLOP/s, per engine setting.

Every case is timed as T(warmup + timed) − T(warmup) over two fresh fits, so set-up, cuDNN's algorithm search,
graph capture and torch.compile's compilation (done by a first, untimed fit) are excluded and what remains is the
steady per-iteration cost. The *plain* engine is the loop the
published code runs: eager strict fp32 (no TF32), contiguous tensors, non-fused Adam, a host read of the loss every
iteration, one fit at a time. Every speed-up is a ratio taken in the same process on the same machine.

    PYTHONPATH=. python3 benchmarks/bench_fit.py --device cuda --sizes 256 512 --batch 1 2 4 8 --bf16 --graph
    PYTHONPATH=. python3 benchmarks/bench_fit.py --device cpu --sizes 128 256 --engines plain optimised --batch 1 2
    PYTHONPATH=. python3 benchmarks/bench_fit.py --device cuda --sizes 512 --engines optimised+graph checkpoint+graph

Peak memory (CUDA's max_memory_allocated) is printed beside dipcore's estimate of it (``estimated_peak_mib``), so
each GPU run also checks the estimate, with and without activation checkpointing.

Prints one JSON line per case (and appends them to --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from dipcore import EngineOptions, get_task, preset_for
from dipcore.api import build_problem, run_fits
from dipcore.fit import FitSettings
from dipcore.memory import estimate_peak_bytes
from dipcore.observation import Observation

PLAIN = EngineOptions(
    sync_every=1,
    channels_last=False,
    tf32=False,
    cudnn_benchmark=True,
    fused_adam=False,
    cuda_graph=False,
    batch_restarts=False,
    checkpoint=False,
    autocast="off",  # the published loop is fp32
)
ENGINES = {
    "plain": PLAIN,
    # dipcore's defaults without the graph: on CUDA TF32, channels_last, fused Adam …; on the CPU fused Adam, and
    # K > 1 fits side by side on threads (dipcore.concurrent)
    "optimised": EngineOptions(cuda_graph=False),
    # dipcore's defaults held to fp32 (on a CPU with native bf16 units, "optimised" runs the net in bf16)
    "fp32": EngineOptions(cuda_graph=False, autocast="off"),
    "stacked": EngineOptions(cuda_graph=False, batch_mode="stack"),  # K > 1 fits in one grouped net, CPU or GPU
    "optimised+graph": EngineOptions(cuda_graph=True),  # dipcore's CUDA defaults
    "bf16+graph": EngineOptions(cuda_graph=True, autocast="bf16"),
    "bf16": EngineOptions(autocast="bf16"),
    "channels_last": EngineOptions(channels_last=True),
    # Activation checkpointing forced on (dipcore's default turns it on only for jobs that do not fit): its cost in
    # time and its saving in memory, against "optimised" and "optimised+graph".
    "checkpoint": EngineOptions(cuda_graph=False, checkpoint=True),
    "checkpoint+graph": EngineOptions(cuda_graph=True, checkpoint=True),
    # The net's forward through torch.compile (dipcore.compiled), against "optimised" and "optimised+graph".
    "compile": EngineOptions(cuda_graph=False, compile=True),
    "compile+graph": EngineOptions(cuda_graph=True, compile=True),
}


def _observation(task: str, size: int, scale: int) -> Observation:
    """A smooth random image: content does not change the speed of a fit."""
    gen = np.random.default_rng(0)
    factor = scale if get_task(task).scaled else 1  # SR observes the size²-pixel output at 1/scale
    img = gen.random((size // factor, size // factor, 3), dtype=np.float32)
    return Observation(img, task, scale=factor)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops_per_fit_iteration(p, obs, device) -> float:
    """FLOPs of one forward + backward of one fit's net, counted by torch.utils.flop_counter (a stacked step does
    K times this useful work, whatever the grouped kernels count)."""
    from torch.utils.flop_counter import FlopCounterMode

    problem = build_problem(p, obs, device=device, seed=0)
    with FlopCounterMode(display=False) as counter:
        problem.net(problem.z).sum().backward()
    return float(counter.get_total_flops())


def _timed_fit(p, obs, device, engine, k: int, iterations: int) -> tuple[float, object]:
    """K fits run as restore_batch runs them (stacked, or side by side on CPU threads, as the engine says)."""
    problems = [build_problem(p, obs, device=device, seed=s) for s in range(k)]
    settings = FitSettings(
        lr=p.lr,
        iterations=iterations,
        reg_noise_std=p.reg_noise_std,
        ema=p.ema,
        backtrack=p.backtrack,
        engine=engine.resolved(device),
    )
    _sync(device)
    t0 = time.perf_counter()
    run_fits(problems, settings, seeds=list(range(k)))
    _sync(device)
    return time.perf_counter() - t0, problems[0]


def run_case(
    task: str,
    size: int,
    engine_name: str,
    k: int,
    *,
    device: torch.device,
    warmup: int,
    timed: int,
    channels: int | None = None,
    scale: int = 4,
) -> dict:
    p = preset_for(task, scale=scale if get_task(task).scaled else None, channels=channels)
    obs = _observation(task, size, scale)
    # A fit runs checkpoint="auto" as off (restore() decides it): record what runs.
    engine = replace(ENGINES[engine_name], checkpoint=ENGINES[engine_name].checkpoint is True)
    _timed_fit(p, obs, device, engine, k, 2)  # lazy imports and initialisation, not part of any figure
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_warm, _ = _timed_fit(p, obs, device, engine, k, warmup)
    t_all, problem = _timed_fit(p, obs, device, engine, k, warmup + timed)
    per_iter = max(t_all - t_warm, 1e-9) / timed
    flops = _flops_per_fit_iteration(p, obs, device) * k
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    estimate = estimate_peak_bytes(p, size, size, fits=k, checkpoint=engine.checkpoint) / 2**20
    return {
        "task": task,
        "size": size,
        "engine": engine_name,
        "fits": k,
        "ms_per_iteration": per_iter * 1e3,
        "ms_per_iteration_per_fit": per_iter * 1e3 / k,
        "images_per_hour": 3600.0 / (p.iterations * per_iter / k),
        "preset_iterations": p.iterations,
        "peak_memory_mib": peak,
        "estimated_peak_mib": estimate,
        "tflops": flops / per_iter / 1e12,
        "gflop_per_iteration": flops / 1e9,
        "params": k * sum(q.numel() for q in problem.net.parameters()),
        "channels": channels or 128,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_facts()["cpu"],
        **(cpu_facts() if device.type == "cpu" else {}),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "timed": timed,
        "engine_options": asdict(engine.resolved(device)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--task", default="sr")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--engines", nargs="+", default=["plain", "optimised"], choices=list(ENGINES))
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[1],
        help="K fits in one batch: stacked, or on a CPU side by side for 'optimised' (not for plain)",
    )
    ap.add_argument("--channels", type=int, default=None, help="width at every scale (default: the preset's 128)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timed", type=int, default=30)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every case of a size this many times, interleaved (noisy machines: take the median)",
    )
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    for size in args.sizes:
        for round_ in range(1, args.rounds + 1):
            for engine in args.engines:
                for k in args.batch if engine != "plain" else [1]:
                    if device.type == "cpu" and "graph" in engine:
                        continue
                    row = run_case(
                        args.task,
                        size,
                        engine,
                        k,
                        device=device,
                        warmup=args.warmup,
                        timed=args.timed,
                        channels=args.channels,
                    )
                    emit({**row, "round": round_}, args.out)
    return 0


def cpu_facts() -> dict:
    """The CPU a figure was measured on: its model, the vector and matrix extensions that decide oneDNN's kernels
    (AVX-512 and its bf16 instructions, AMX), and whether dipcore runs large fits in bf16 there."""
    from dipcore.engine import cpu_has_native_bf16

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the model from platform only
        pass
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return {"cpu": model, "cpu_flags": wanted, "native_bf16": cpu_has_native_bf16()}


def emit(row: dict, out: str | None) -> None:
    """Print `row` as one JSON line, and append it to the file `out` when given (the raw records of RESULTS.md)."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
