"""What else could make a DIP step faster on a CPU: one training step of the default net under backend variants.

The performance issue asks for 1.2× over the plain loop on CPUs. `bench_fit.py` measures dipcore's engines
(channels_last, stacked fits); this script measures the backend-level options that are not engine settings, each
against the plain eager step in the same process:

- ``eager``: the plain step (contiguous tensors, oneDNN convolutions — PyTorch's CPU default);
- ``channels_last``: NHWC tensors;
- ``no_mkldnn``: oneDNN off, so convolutions fall back to im2col + GEMM;
- ``compile_net``: ``torch.compile`` (Inductor) of the net; the compile time is reported apart. (Compiling the whole
  step, Adam and the Lanczos operator included, fails in torch 2.13 on a stride check of
  ``replication_pad2d_backward``'s meta kernel, so the net alone is compiled.)

    PYTHONPATH=. python3 benchmarks/cpu_variants.py --sizes 128 256 \
        --out benchmarks/results/<date>-cpu/cpu_variants.jsonl

Prints one JSON line per case. Run it on a quiet machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dipcore import preset_for
from dipcore.api import build_problem
from dipcore.observation import Observation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import emit

VARIANTS = ("eager", "channels_last", "no_mkldnn", "compile_net")


def _step_fn(variant: str, size: int, scale: int = 4):
    """A plain SR ×4 step (jitter, forward, Lanczos loss, backward, Adam) of the paper's preset at size²."""
    p = preset_for("sr", scale=scale)
    lr_image = np.random.default_rng(0).random((size // scale, size // scale, 3), dtype=np.float32)
    prob = build_problem(p, Observation(lr_image, "sr", scale=scale), device=torch.device("cpu"), seed=0)
    net, z, op, target = prob.net, prob.z, prob.operator, prob.target
    if variant == "channels_last":
        net.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(net) if variant == "compile_net" else net
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(0)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = forward(z + p.reg_noise_std * torch.randn(z.shape, generator=gen))
        loss = (op(out) - target).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()  # the plain loop reads the loss every iteration

    return step


def run_case(variant: str, size: int, *, warmup: int, timed: int) -> dict:
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = variant != "no_mkldnn"
    try:
        step = _step_fn(variant, size)
        t0 = time.perf_counter()
        for _ in range(warmup):  # compilation and oneDNN's first-call set-up land here
            step()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(timed):
            step()
        per_iter = (time.perf_counter() - t0) / timed
    finally:
        torch.backends.mkldnn.enabled = saved
    return {
        "variant": variant,
        "size": size,
        "ms_per_iteration": per_iter * 1e3,
        "warmup_seconds": warm,
        "warmup": warmup,
        "timed": timed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1m": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timed", type=int, default=8)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    for size in args.sizes:
        base = None
        for variant in args.variants:
            row = run_case(variant, size, warmup=args.warmup, timed=args.timed)
            base = row["ms_per_iteration"] if variant == "eager" else base
            row["speedup_vs_eager"] = base / row["ms_per_iteration"] if base else None
            emit(row, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
