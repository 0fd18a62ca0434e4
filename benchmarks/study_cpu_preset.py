"""Which CPU preset earns its place (issue 28): PSNR against time for nets of several widths, on images that are not
the benchmarks' — the paper code's samples (``shared/data/dip``) and photos that scikit-image ships.

The fast preset (32 channels, a short fixed count) lost to bicubic on Set5 and Set14 ×4 on this CPU. Its time per
image is the budget: a narrower net runs more iterations in it. One long fit per (image, width) gives the whole
curve: the iterate at iteration k of a constant-learning-rate fit is what a preset of k iterations returns, so the
PSNR of the iterate and of its moving average (EMA 0.99, what evaluations record as ``psnr_average``) at each k,
with the fit's seconds per iteration, place every count of that width on the PSNR-against-time plane. Each image is
centre-cropped to ``--size``² and degraded with the evaluation protocol of its task (SR ×4: Pillow LANCZOS, Y-PSNR,
4 pixels shaved; inpainting: 50 % of pixels dropped; denoising: σ = 25), seeded.

    PYTHONPATH=. python3 benchmarks/study_cpu_preset.py --task sr --widths 32 16 8 \\
        --out benchmarks/results/<date>-cpu/cpu_preset_sr.jsonl
    PYTHONPATH=. python3 benchmarks/study_cpu_preset.py --summarise benchmarks/results/<date>-cpu/cpu_preset_sr.jsonl

One JSON line per (task, image, width): seconds per iteration (wall clock of the whole fit over its iterations, on
a machine that may be busy: the summary compares widths measured in the same process, one after the other), and the
curves every ``--every`` iterations. ``--summarise`` prints per task and width the PSNR each width reaches within the
fast preset's time per image, against the baseline (bicubic; the masked or noisy input).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dipcore
from dipcore.tasks import get_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import emit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dip"
# Not benchmark images (Set5, Set14, cbm3d9, heide11 hold none of them).
IMAGES = {
    "zebra": lambda: dipcore.load_image(str(DATA / "sr" / "zebra_GT.png")),
    "vase": lambda: dipcore.load_image(str(DATA / "inpainting" / "vase.png")),
    "snail": lambda: dipcore.load_image(str(DATA / "denoising" / "snail.jpg")),
    "chelsea": lambda: _skimage("chelsea"),
    "coffee": lambda: _skimage("coffee"),
}
PROTOCOL = {"sr": {"y_channel": True, "shave": 4}, "inpaint": {}, "denoise": {}}
# How long each width runs, in multiples of the fast preset's count: a narrower net runs more iterations in its time.
LENGTH = {32: 2.0, 16: 3.0, 8: 4.0}


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)().astype(np.float32) / 255.0


def observe(task: str, clean: np.ndarray, seed: int) -> Any:
    if task == "sr":
        return dipcore.degrade(clean, task="sr", scale=4)
    if task == "inpaint":
        return dipcore.degrade(clean, task="inpaint", drop=0.5, seed=seed)
    return dipcore.degrade(clean, task="denoise", sigma=25.0, seed=seed)


def run(task: str, image: str, size: int, width: int, every: int, seed: int, length: float = 1.0) -> dict:
    clean = dipcore.center_crop(IMAGES[image](), size, size)
    obs = observe(task, clean, seed)
    fast = get_preset(task, preset="fast")
    iterations = int(fast.iterations * LENGTH.get(width, 2.0) * length)
    started = time.perf_counter()
    res = dipcore.restore(
        obs,
        task=task,
        preset="fast",
        channels=width,
        iterations=iterations,
        early_stopping=False,
        ema=0.99,
        seed=seed,
        reference=clean,
        psnr_protocol=PROTOCOL[task],
    )
    seconds = time.perf_counter() - started
    raw, avg = res.history["psnr"], res.history.get("psnr_average") or res.history.get("psnr_avg")
    baseline = dipcore.psnr(_naive(task, obs, clean), clean, **PROTOCOL[task])
    return {
        "task": task,
        "image": image,
        "size": size,
        "width": width,
        "fast_iterations": fast.iterations,
        "iterations": iterations,
        "seconds": round(seconds, 2),
        "s_per_it": round(seconds / iterations, 5),
        "every": every,
        "raw": [round(float(v), 2) for v in raw[every - 1 :: every]],
        "avg": [round(float(v), 2) for v in avg[every - 1 :: every]] if avg else None,
        "baseline": round(float(baseline), 2),
        "engine": res.engine.autocast if hasattr(res.engine, "autocast") else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def _naive(task: str, obs: Any, clean: np.ndarray) -> np.ndarray:
    """The baseline a restoration must beat: bicubic for SR, the observation itself otherwise."""
    if task == "sr":
        return dipcore.observation.upscale_bicubic(obs.image, 4)[: clean.shape[0], : clean.shape[1]]
    return obs.image


def summarise(paths: list[str]) -> None:
    """Per task and width, the mean PSNR reached within the fast preset's time per image (its count at 32
    channels, timed in the same process as the others) and within twice that time."""
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        fast = [r for r in mine if r["width"] == 32]
        budget = {r["image"]: r["fast_iterations"] * r["s_per_it"] for r in fast}  # seconds per image
        print(f"\n{task}: PSNR within the fast preset's time per image (32 channels, {fast[0]['fast_iterations']} it)")
        print("time | width | s/it | iterations | last iterate dB | moving average dB | baseline dB | images")
        for factor in (1, 2):
            for width in sorted({r["width"] for r in mine}, reverse=True):
                at = []
                for r in (r for r in mine if r["width"] == width and r["image"] in budget):
                    k = min(int(factor * budget[r["image"]] / r["s_per_it"]), r["iterations"])
                    i = max(k // r["every"] - 1, 0)
                    at.append((r["s_per_it"], k, r["raw"][i], (r["avg"] or r["raw"])[i], r["baseline"]))
                cols = [sum(c) / len(at) for c in zip(*at, strict=True)]
                print(
                    f"{factor}× | {width} | {cols[0]:.3f} | {cols[1]:.0f} | {cols[2]:.2f} | {cols[3]:.2f} | "
                    f"{cols[4]:.2f} | {len(at)}"
                )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=tuple(PROTOCOL), default="sr")
    ap.add_argument("--images", nargs="+", default=None, help="default: the task's own two and chelsea")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 16, 8])
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--length", type=float, default=1.0, help="runs this many times their usual length (smoke: 0.02)")
    ap.add_argument("--out")
    ap.add_argument("--summarise", nargs="+", metavar="JSONL")
    args = ap.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return 0
    own = {"sr": ["zebra", "chelsea", "coffee"], "inpaint": ["vase", "chelsea", "coffee"], "denoise": ["snail"]}
    for image in args.images or own[args.task]:
        for width in args.widths:  # the widths of one image one after the other: the same load on the machine
            emit(run(args.task, image, args.size, width, args.every, args.seed, args.length), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
