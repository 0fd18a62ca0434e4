"""Where a CPU fit's time goes: torch.profiler's per-operator totals over the steady iterations of one fit.

One `dipcore.restore` runs with a callback that advances the profiler once per iteration, so the set-up (building
the net, the code, the operator) and the first iterations (oneDNN's kernel choice, the allocator) are outside
what is recorded. Each row is an operator's self CPU time per iteration and its share of the step; a family
column groups them (convolution forward/backward, normalisation, activation, padding, resampling, optimiser …).

    PYTHONPATH=. python3 benchmarks/profile_cpu_step.py --size 128 --channels 128 32 --precisions fp32 bf16

Prints one table per case and one JSON line per case (appended to --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, schedule

import dipcore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import cpu_facts

# Operator name fragments -> the part of the step they belong to (first match wins).
FAMILIES = (
    ("convolution backward", ("convolution_backward", "mkldnn_convolution_backward")),
    ("convolution forward", ("convolution", "conv2d", "mkldnn_convolution")),
    ("batch norm", ("batch_norm",)),
    ("activation", ("leaky_relu", "sigmoid", "relu")),
    ("padding", ("pad",)),
    ("resampling", ("upsample", "interpolate", "avg_pool", "max_pool")),
    ("optimiser", ("adam", "_foreach", "lerp", "addcdiv", "sqrt")),
    ("dtype casts", ("to_copy", "_to_copy", "copy_", "to")),
    ("elementwise", ("add", "mul", "sub", "div", "pow", "mean", "sum", "cat", "fill", "zero", "randn", "normal")),
)


def family(name: str) -> str:
    lowered = name.lower()
    for label, fragments in FAMILIES:
        if any(f in lowered for f in fragments):
            return label
    return "other"


def profile_fit(size: int, channels: int, precision: str, *, warmup: int, active: int, task: str) -> dict:
    """Per-operator self CPU time (ms per iteration) of one fit's steady iterations."""
    rng = np.random.default_rng(0)
    side = size // 4 if task == "sr" else size
    image = rng.random((side, side, 3), dtype=np.float32)
    engine = dipcore.EngineOptions(autocast="bf16" if precision == "bf16" else "off")
    sched = schedule(wait=0, warmup=warmup, active=active, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=sched) as prof:
        dipcore.restore(
            image,
            task=task,
            scale=4 if task == "sr" else None,
            channels=channels,
            iterations=warmup + active + 1,
            engine=engine,
            callback=lambda record: prof.step(),
        )
    per_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        per_op[event.key] += event.self_cpu_time_total / 1e3 / active  # ms per iteration
    total = sum(per_op.values())
    families: dict[str, float] = defaultdict(float)
    for name, ms in per_op.items():
        families[family(name)] += ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:15]
    return {
        "task": task,
        "size": size,
        "channels": channels,
        "precision": precision,
        "ms_per_iteration": total,
        "families_ms": dict(sorted(families.items(), key=lambda kv: -kv[1])),
        "top_ops_ms": dict(top),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **cpu_facts(),
        "warmup": warmup,
        "active": active,
    }


def print_case(case: dict) -> None:
    total = case["ms_per_iteration"]
    print(
        f"\n{case['task']} {case['size']}², {case['channels']} channels, {case['precision']}: "
        f"{total:.1f} ms of operator time per iteration ({case['threads']} threads)"
    )
    for name, ms in case["families_ms"].items():
        print(f"  {name:22s} {ms:8.1f} ms  {100 * ms / total:5.1f} %")
    print("  top operators:")
    for name, ms in case["top_ops_ms"].items():
        print(f"    {name:40s} {ms:8.1f} ms  {100 * ms / total:5.1f} %")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sr", choices=["sr", "denoise"])
    ap.add_argument("--size", type=int, default=128, help="the output's side")
    ap.add_argument("--channels", type=int, nargs="+", default=[128, 32], help="128: the paper's width; 32: fast")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--active", type=int, default=5)
    ap.add_argument("--out", help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    for channels in args.channels:
        for precision in args.precisions:
            case = profile_fit(args.size, channels, precision, warmup=args.warmup, active=args.active, task=args.task)
            print_case(case)
            line = json.dumps(case)
            print(line, file=sys.stderr)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
