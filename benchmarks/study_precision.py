"""The price of a lower precision in PSNR, on whole study sets: the same fits in fp32 and in bf16 autocast.

Each image of a set is centre-cropped, degraded with the task's protocol (seeded), and restored once per precision
with the same seed, so the two fits differ only by the engine's arithmetic. The precisions run interleaved, image
by image, so that the machine's drift in speed touches both alike. Every fit records its PSNR against the clean
crop and its wall time; the summary gives, per task, the mean PSNR of each precision, the mean and the range of the
per-image difference, and the median speed-up.

    PYTHONPATH=. python3 benchmarks/study_precision.py --data-root ../shared/data --size 128 --preset fast \
        --tasks denoise sr inpaint --out benchmarks/results/<date>-cpu/precision_study.jsonl

Sets: denoising σ = 25 on cbm3d9, SR ×4 on Set14 (PSNR on Y, 4 pixels shaved), inpainting of 50 % random pixels on
heide11. Only dipcore is needed (no Ray, no Prefect), so the same command runs on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import dipcore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import cpu_facts

SETS = {  # task -> (folder under --data-root, degradation, PSNR protocol)
    "denoise": ("cbm3d9", dict(task="denoise", sigma=25), dict()),
    "sr": ("set14", dict(task="sr", scale=4), dict(y_channel=True, shave=4)),
    "inpaint": ("heide11", dict(task="inpaint", drop=0.5), dict()),
}
PRECISIONS = {"fp32": dipcore.EngineOptions(autocast="off"), "bf16": dipcore.EngineOptions(autocast="bf16")}


def study(args: argparse.Namespace) -> list[dict]:
    rows = []
    for task in args.tasks:
        folder, degradation, protocol = SETS[task]
        paths = sorted(p for p in (Path(args.data_root) / folder).iterdir() if p.suffix == ".png")
        for index, path in enumerate(paths[: args.limit]):
            image = dipcore.load_image(path)
            side = min(args.size, *image.shape[:2])
            clean = dipcore.center_crop(image, side, side)
            obs = dipcore.degrade(clean, seed=index, **degradation)
            overrides = {"channels": args.channels} if args.channels else {}
            if args.iterations:
                overrides["iterations"] = args.iterations
            for precision in args.precisions:
                t0 = time.perf_counter()
                res = dipcore.restore(
                    obs, task=task, preset=args.preset, seed=0, engine=PRECISIONS[precision], **overrides
                )
                seconds = time.perf_counter() - t0
                row = {
                    "task": task,
                    "image": path.name,
                    "precision": precision,
                    "psnr": dipcore.psnr(res.image, clean, **protocol),
                    "psnr_degraded": dipcore.psnr(obs.image, clean, **protocol) if task != "sr" else None,
                    "seconds": seconds,
                    "iterations": res.iterations_run,
                    "size": args.size,
                    "preset": args.preset,
                    "channels": args.channels,
                    "engine": res.engine,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    **cpu_facts(),
                }
                rows.append(row)
                print(f"{task:8s} {path.name:24s} {precision}: {row['psnr']:6.2f} dB in {seconds:6.1f} s", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    return rows


def summarise(rows: list[dict], base: str = "fp32", other: str = "bf16") -> list[str]:
    lines = [
        f"| task | images | {base}: mean dB | {other}: mean dB | {other} − {base}: mean (min, max) | "
        f"speed-up: median (range) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        pairs = {}
        for r in rows:
            if r["task"] == task:
                pairs.setdefault(r["image"], {})[r["precision"]] = r
        both = [p for p in pairs.values() if base in p and other in p]
        if not both:
            continue
        diffs = [p[other]["psnr"] - p[base]["psnr"] for p in both]
        speed = [p[base]["seconds"] / p[other]["seconds"] for p in both]
        lines.append(
            f"| {task} | {len(both)} | {statistics.fmean(p[base]['psnr'] for p in both):.2f} | "
            f"{statistics.fmean(p[other]['psnr'] for p in both):.2f} | {statistics.fmean(diffs):+.2f} "
            f"({min(diffs):+.2f}, {max(diffs):+.2f}) | {statistics.median(speed):.2f}× "
            f"({min(speed):.2f}–{max(speed):.2f}) |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--tasks", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--size", type=int, default=128, help="side of the centre crop of each clean image")
    ap.add_argument("--preset", default="fast", choices=["fast", "paper"])
    ap.add_argument("--channels", type=int, help="width at every scale (default: the preset's)")
    ap.add_argument("--iterations", type=int, help="default: the preset's")
    ap.add_argument("--limit", type=int, help="at most this many images per set")
    ap.add_argument("--out", help="append one JSON line per fit to this file")
    ap.add_argument("--summarise", metavar="JSONL", help="only print the summary of an earlier run's lines")
    args = ap.parse_args(argv)
    if args.summarise:
        rows = [json.loads(line) for line in Path(args.summarise).read_text().splitlines() if line.strip()]
    else:
        rows = study(args)
    print("\n".join(summarise(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
