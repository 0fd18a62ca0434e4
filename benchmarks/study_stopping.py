"""Stopping without ground truth (issue 14): on each task, how close does each candidate rule come to the best output
along the run — every rule judged on the same runs.

Each image of a set is centre-cropped to each size, degraded with the task's protocol (seeded) and restored with the
task's paper preset at the study's width, run longer than the preset's count (× 1.5) so that the rules can fire.
Every fit records per iteration the PSNR of the iterate (``raw``) and of its moving average (``avg``; EMA 0.99
recorded where the preset keeps none) against the clean crop, and every candidate's signal
(``stopping_candidates.Signals``); the rules pick from those series afterwards. Variants that change the fit run on
the same crop, observation and seed:

- ``base``: the preset; its rows ``ema0.995``, ``ema0.999`` (plain, as ``restore(ema=…)`` keeps them) and
  ``ema0.999w`` (warmed up: ``stopping_candidates.Average``) are the same fit returning a longer average;
- ``selfval``: 10 % of the observed pixels held out of the loss; their data fit is the validation signal, its
  smoothed minimum the pick, and the output there is returned (no refit on all pixels). Issue 14 names it after Li
  et al. 2021, whose self-validation watches an online autoencoder of the outputs instead; a held-out split of the
  measurements is ZS-SSL's (Yaman et al., ICLR 2022);
- ``cosine``: the learning rate decays along a cosine to 0 at the preset's count and stays there (rows
  ``cosine+ema…`` with the longer averages);
- ``sure`` (denoising): the net fed with the noisy image and trained on SURE's estimate of the MSE, with σ̂ and a
  Monte-Carlo divergence of step 0.5 σ̂ (Metzler et al. 2018; Jo et al. 2021, whose RAdam, step decay and net are
  not copied); its loss curve, the estimate, is its rule's signal.

No rule is told σ: denoising's rules get σ̂ (``dipcore.noise_level``), and the denoising preset is the blind one
(σ = 25's). One JSON line per image and row: the curves (0.01 dB), the signals (4 digits), the oracle, the fixed
count's choice, each rule's choice, seconds per iteration and each signal's cost. ``--summarise`` prints per task,
level and size each row and rule against the base run's oracle, with the goal's criteria as pass/fail.

    PYTHONPATH=. python3 benchmarks/study_stopping.py --smoke
    PYTHONPATH=. python3 benchmarks/study_stopping.py --tasks denoise --sizes 96 --limit 2 --estimate
    PYTHONPATH=. python3 benchmarks/study_stopping.py --tasks denoise jpeg sr --sizes 96 --limit 2 \\
        --out benchmarks/results/<date>-cpu/stopping_study.jsonl
    PYTHONPATH=. python3 benchmarks/study_stopping.py --summarise benchmarks/results/<date>-cpu/stopping_study.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import dipcore
from dipcore.api import build_problem
from dipcore.engine import EngineOptions, fit_work
from dipcore.fit import FitProblem, FitResult, FitSettings, fit
from dipcore.noise_level import estimate_sigma
from dipcore.selfvalidation import DataFit, held_out_mask, holding_out, observed_pixels
from dipcore.stopping import VarianceStopping

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import cpu_facts
from stopping_candidates import (
    Average,
    Choice,
    Context,
    Signals,
    SignalSpec,
    apply_rule,
    at_iteration,
    candidate_rules,
    oracle,
)

from pipelines.reporting.stopping_study import read_lines, summarise


@dataclass(frozen=True)
class TaskSet:
    folder: str  # under --data-root
    level: str  # the degrade() keyword the study varies
    levels: tuple  # its default values
    option: str  # the command-line option that sets them


SETS = {
    "denoise": TaskSet("cbm3d9", "sigma", (15, 25, 50), "sigmas"),
    "jpeg": TaskSet("cbm3d9", "quality", (10, 20, 40), "qualities"),  # blind: the fit is never told the quality
    "inpaint": TaskSet("heide11", "drop", (0.5,), "drops"),
    "sr": TaskSet("set14", "scale", (4,), "scales"),
}
VARIANTS = ("base", "selfval", "cosine", "sure")
_LOOP_EMA = 0.99  # the moving average recorded where a preset keeps none (the denoising code's weight)


@dataclass(frozen=True)
class StudyConfig:
    """The settings of a study's fits and rules (one per run of the script)."""

    channels: int = 32  # the net's width at every scale (`fast`'s)
    iterations: Mapping[str, int] = field(default_factory=dict)  # per task; missing: factor × the preset's count
    factor: float = 1.5
    variants: tuple[str, ...] = VARIANTS
    # Longer averages, rows of the base and cosine fits: plain, as restore(ema=…) would keep them, and warmed up.
    averages: tuple[Average, ...] = (Average(0.995), Average(0.999), Average(0.999, warmup=True))
    window: int = 100  # ES-WMV's W (Wang et al.)
    patiences: tuple[int, ...] = (1000, 300)  # ES-WMV's published P, and a shorter one
    smooth: int = 100  # trailing mean of the noisy series (held-out data fit, SURE) before their minimum is sought
    holdout: float = 0.1  # fraction of the observed pixels self-validation holds out
    sure_epsilon: float = 0.5  # SURE's finite difference, × σ̂ (Jo et al.'s 0.5 σ; Metzler's max|y|/1000 is gamed)
    seed: int = 0  # the fits' seed
    device: str = "cpu"

    def iterations_for(self, task: str, count: int) -> int:
        return self.iterations.get(task) or max(1, round(self.factor * count))


# --------------------------------------------------------------------------------------------------- variants


class _Perturbed(nn.Module):
    """The net run twice per step, on its input y and on y + εb (b ~ N(0, I) on the image's box, drawn afresh), so
    that SURE's loss has bᵀ(f(y + εb) − f(y)) / ε, a Monte-Carlo estimate of the divergence of y ↦ f(y)."""

    def __init__(self, net: nn.Module, crop: tuple[int, int, int, int], epsilon: float, seed: int) -> None:
        super().__init__()
        self.net, self.crop, self.epsilon = net, crop, epsilon
        self.generator: torch.Generator | None = None
        self.seed = seed
        self.divergence: Tensor | None = None

    def forward(self, z: Tensor) -> Tensor:
        top, left, h, w = self.crop
        if self.generator is None:
            self.generator = torch.Generator(device=z.device).manual_seed(self.seed)
        out = self.net(z)
        b = torch.zeros_like(z)
        b[..., top : top + h, left : left + w] = torch.randn(
            (*z.shape[:2], h, w), generator=self.generator, device=z.device
        )
        moved = self.net(z + self.epsilon * b)
        box = (..., slice(top, top + h), slice(left, left + w))
        self.divergence = (b[box] * (moved[box] - out[box])).sum() / self.epsilon
        return out


@dataclass
class _SureProblem(FitProblem):
    """A fit whose loss is SURE: ‖f(y) − y‖²/n − σ̂² + 2σ̂²·div/n, an unbiased estimate of the MSE to the clean image
    for Gaussian noise of level σ̂ (the net ``_Perturbed``, so that the divergence is there)."""

    sigma: float = 0.0

    def per_fit_loss(self, k: int) -> Callable[[Tensor], Tensor]:
        n, s2 = self.target.numel(), self.sigma**2

        def loss(out: Tensor) -> Tensor:
            mse = (out - self.target).square().mean()
            return (mse - s2 + 2.0 * s2 * self.net.divergence / n).reshape(1)

        return loss


def _cosine(count: int) -> Callable[[int], float]:
    """The learning rate's factor at iteration t: a cosine from 1 to 0 at ``count``, then 0."""
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, count) / count))


@dataclass
class _Fit:
    """One fit of a variant and what the rows need of it."""

    variant: str
    result: FitResult
    signals: Signals
    seconds: float
    iterations: int
    lr_schedule: str | None = None
    holdout: float | None = None
    outputs_watched: int = 2  # the iterate, the loop's average, and any longer averages
    engine: dict = field(default_factory=dict)


def run_variant(
    variant: str,
    p: dipcore.tasks.TaskPreset,
    obs: dipcore.Observation,
    ref: np.ndarray,
    *,
    config: StudyConfig,
    iterations: int,
    count: int,
    sigma_hat: float | None,
) -> _Fit:
    """Fit ``variant`` of preset ``p`` on ``obs`` for ``iterations``, with the study's signals recorded; ``count`` is
    the fixed count, where the cosine schedule reaches 0."""
    device = torch.device(config.device)
    task = dipcore.get_task(p.task)
    fit_p, fit_obs = p, obs
    if variant == "sure":  # the net sees y itself; no jitter (the ε-perturbation is its randomness)
        fit_p = dataclasses.replace(p, input="guide", input_depth=obs.image.shape[2], reg_noise_std=0.0)
        fit_obs = dataclasses.replace(obs, guide=obs.image)
    problem = build_problem(fit_p, fit_obs, device=device, seed=config.seed, reference=ref)
    observed = observed_pixels(problem.operator, problem.target)
    data = DataFit(problem.operator, problem.target, observed)
    heldout, holdout, schedule = None, None, None
    if variant == "selfval":
        held = held_out_mask(observed, config.holdout, config.seed)  # the pixels restore's self-validation holds out
        heldout, holdout = DataFit(problem.operator, problem.target, held), config.holdout
        keep = 1.0 - held
        problem.operator, problem.target = holding_out(problem.operator, keep), problem.target * keep
    if variant == "cosine":
        schedule = _cosine(count)
    if variant == "sure":
        net = _Perturbed(problem.net, problem.crop, config.sure_epsilon * sigma_hat, config.seed)
        problem = _SureProblem(**{**vars(problem), "net": net}, sigma=sigma_hat)
    spec = SignalSpec(
        iterations,
        window=config.window,
        averages=config.averages if variant in ("base", "cosine") else (),
        data=data,
        heldout=heldout,
        reference=problem.reference,
        protocol=task.psnr_protocol(p.scale),
        timed=device.type == "cpu",
    )
    # SURE's two forward passes stay fp32 and eager: its divergence is a difference of outputs ε apart.
    engine = EngineOptions(autocast="off", cuda_graph=False) if variant == "sure" else EngineOptions()
    engine = engine.resolved(device, work=fit_work(problem.net, *problem.crop[2:]), bf16_ok=task.bf16_default)
    settings = FitSettings(
        lr=p.lr,
        iterations=iterations,
        reg_noise_std=fit_p.reg_noise_std,
        ema=p.ema or _LOOP_EMA,
        backtrack=p.backtrack and variant != "sure",  # SURE's loss may be ≤ 0: no loss ratio to backtrack on
        psnr_protocol=spec.protocol,
        engine=engine,
        monitors=(lambda: Signals(spec),),
        lr_schedule=schedule,
    )
    started = time.perf_counter()
    result = fit(problem, settings, generator=torch.Generator(device=device).manual_seed(config.seed))
    seconds = time.perf_counter() - started
    return _Fit(
        variant,
        result,
        result.monitors[0],
        seconds,
        iterations,
        lr_schedule=f"cosine to 0 at {count}" if schedule else None,
        holdout=holdout,
        outputs_watched=2 + len(spec.averages),
        engine=dataclasses.asdict(engine),
    )


# ------------------------------------------------------------------------------------------------------ one image


def observe(task: str, clean: np.ndarray, level: Any, seed: int) -> tuple[dipcore.Observation, np.ndarray]:
    """The seeded observation of ``clean`` and the reference it is scored against (SR trims to the scale)."""
    obs = dipcore.degrade(clean, task=task, seed=seed, **{SETS[task].level: level})
    h, w = obs.meta["clean_shape"][:2]
    return obs, clean[:h, :w]


def study_image(
    task: str,
    clean: np.ndarray,
    *,
    level: Any,
    config: StudyConfig,
    image: str = "image",
    degradation_seed: int = 0,
    rules_for: Callable[[bool], list] | None = None,
) -> list[dict]:
    """Every variant of ``config`` on one clean crop: one row per (fit, returned average), each with its curves,
    signals, oracle, fixed counts and every rule's choice. ``rules_for(discrepancy)`` replaces the study's rules."""
    obs, ref = observe(task, clean, level, degradation_seed)
    scale = level if SETS[task].level == "scale" else None
    p = dipcore.preset_for(task, preset="paper", scale=scale, channels=config.channels)
    fast = dipcore.preset_for(task, preset="fast", scale=scale)
    n = config.iterations_for(task, p.iterations)
    count = min(p.iterations, n)  # the fixed count (the preset's, unless the study runs shorter)
    sigma_hat = estimate_sigma(obs.image) if task == "denoise" else None  # Gaussian noise only
    rules = (rules_for or _study_rules(config))(sigma_hat is not None)
    protocol = dipcore.get_task(task).psnr_protocol(p.scale)
    naive_name, naive = dipcore.get_task(task).naive(obs.image, p.scale)
    common = {
        "task": task,
        "set": SETS[task].folder,
        "image": image,
        "size": int(clean.shape[0]),
        "crop": list(ref.shape),
        "level": SETS[task].level,
        "level_value": level,
        "seed": config.seed,
        "degradation_seed": degradation_seed,
        "channels": config.channels,
        "iterations": n,
        "count": count,
        "fast_count": fast.iterations,
        "lr": p.lr,
        "preset_ema": p.ema,
        "preset_output": p.output,
        "window": config.window,
        "patiences": list(config.patiences),
        "smooth": config.smooth,
        "sigma_hat": None if sigma_hat is None else round(255 * sigma_hat, 3),
        "psnr_degraded": round(dipcore.psnr(naive, ref, **protocol.kwargs()), 4),
        "degraded": naive_name,
    }
    rows = []
    for variant in config.variants:
        if variant == "sure" and sigma_hat is None:
            continue  # SURE is for Gaussian noise
        fitted = run_variant(variant, p, obs, ref, config=config, iterations=n, count=count, sigma_hat=sigma_hat)
        views = [None, *(config.averages if variant in ("base", "cosine") else ())]
        for average in views:
            row = _row(fitted, average, p, fast, rules, n, count, sigma_hat)
            rows.append({**common, **row})
    return rows


def _study_rules(config: StudyConfig) -> Callable[[bool], list]:
    return lambda discrepancy: candidate_rules(
        patiences=config.patiences, smooth=config.smooth, discrepancy=discrepancy
    )


def _row(
    fitted: _Fit, average: Average | None, p, fast, rules: list, n: int, count: int, sigma_hat: float | None
) -> dict:
    """The row of one fit returning its loop's average (``average`` None) or a longer one (its rules that return
    the iterate are the loop's row's: left out)."""
    history, signals = fitted.result.history, fitted.signals.read()
    view = "avg" if average is None else average.name
    curves = {"raw": history["psnr"], "avg": history["psnr_average"] if average is None else signals[f"psnr_{view}"]}
    series = {}
    for signal in ("variance", "datafit", "heldout"):
        # A longer average's row keeps its own signals only: the iterate's are in the loop's row.
        for output, key in (("raw", f"{signal}_raw"), ("avg", f"{signal}_{view}"))[0 if average is None else 1 :]:
            if key in signals:
                series[f"{signal}_{output}"] = signals[key]
    if fitted.variant == "sure":
        series["sure_raw"] = history["loss"]  # SURE's estimate of the iterate's MSE to the clean image
    # What the row returns at a fixed count: the preset's output for the loop's own average, else the longer one.
    default = ("avg" if p.output == "average" else "raw") if average is None else "avg"
    picks: dict[str, Choice] = {"fixed": at_iteration(curves, default, count)}
    if default == "raw":
        picks["fixed_avg"] = at_iteration(curves, "avg", count)
    if fast.lr == p.lr and fast.iterations <= n:  # the fast preset's count, on the same run
        picks["fixed_fast"] = at_iteration(curves, default, fast.iterations)
    ctx = Context(iterations=n, sigma_hat=sigma_hat)
    for rule in rules:
        if rule.key() in series and (average is None or rule.output == "avg"):
            picks[rule.name] = apply_rule(rule, curves, series[rule.key()], ctx, default=default)
    variant = fitted.variant if average is None else ("" if fitted.variant == "base" else f"{fitted.variant}+")
    variant += "" if average is None else view
    best = oracle(curves)
    return {
        "variant": variant,
        "fit": fitted.variant,
        "ema": average.weight if average else p.ema or _LOOP_EMA,
        "ema_warmup": bool(average and average.warmup),
        "returns": default,
        "lr_schedule": fitted.lr_schedule,
        "holdout": fitted.holdout,
        "oracle": best.as_row(),
        "best": {name: oracle({name: c}).as_row() for name, c in curves.items()},
        "picks": {name: choice.as_row() for name, choice in picks.items()},
        "curves": {name: [round(v, 2) for v in c] for name, c in curves.items()},
        "signals": {name: [None if v is None else float(f"{v:.4g}") for v in s] for name, s in series.items()},
        "seconds": round(fitted.seconds, 3),
        "seconds_per_iteration": fitted.seconds / fitted.iterations,
        "signal_ms_per_iteration": fitted.signals.ms_per_iteration(),
        "outputs_watched": fitted.outputs_watched,
        "engine": fitted.engine,
        "device": str(fitted.result.final.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **cpu_facts(),
    }


# --------------------------------------------------------------------------------------------------- costs, plan


def deployed_wmv_ms(shape: tuple[int, ...], window: int, device: str = "cpu", updates: int = 5) -> float:
    """Milliseconds of one update of the deployed rule (VarianceStopping: its window variance, and its choice kept on
    the device) on an output of ``shape`` (1, C, H, W), its window full."""
    rule = VarianceStopping(window=window, patience=10**9)
    x = torch.rand(shape, device=device)
    for i in range(window):
        rule.update(x, i + 1)
    started = time.perf_counter()
    for i in range(updates):
        rule.update(x, window + i + 1)
    float(rule.variance)  # wait for the device
    return 1e3 * (time.perf_counter() - started) / updates


def seconds_per_iteration(
    task: str, clean: np.ndarray, level: Any, config: StudyConfig, variant: str, short: int = 6, long: int = 26
) -> float:
    """Seconds per iteration of ``variant`` with the study's signals: two short fits, ``long`` and ``short``
    iterations, so that set-up and the first iterations cancel out (on any device: no per-iteration host read),
    after a first one that pays the process's one-off costs (oneDNN's kernels, allocations)."""
    obs, ref = observe(task, clean, level, 0)
    scale = level if SETS[task].level == "scale" else None
    p = dipcore.preset_for(task, preset="paper", scale=scale, channels=config.channels)
    sigma_hat = estimate_sigma(obs.image) if task == "denoise" else None
    seconds = {}
    for n in (2, short, long):
        started = time.perf_counter()
        run_variant(variant, p, obs, ref, config=config, iterations=n, count=p.iterations, sigma_hat=sigma_hat)
        seconds[n] = time.perf_counter() - started
    return max(seconds[long] - seconds[short], 0.0) / (long - short)


def crops(task: str, args: argparse.Namespace, size: int) -> list[tuple[str, np.ndarray]]:
    """(name, centre crop) of ``--limit`` images of the set from its ``--skip``-th (sorted by name); a crop is at most
    the image."""
    folder = Path(args.data_root) / SETS[task].folder
    paths = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    paths = paths[args.skip :][: args.limit]
    out = []
    for path in paths:
        image = dipcore.load_image(path)
        side = min(size, *image.shape[:2])
        out.append((path.name, dipcore.center_crop(image, side, side)))
    return out


def plan(args: argparse.Namespace, config: StudyConfig) -> float:
    """Print how long the study will take, from a short timed fit per task, size and variant; the seconds."""
    total = 0.0
    print(f"plan ({torch.get_num_threads()} threads):", flush=True)
    for task in args.tasks:
        levels = levels_of(task, args)
        for size in args.sizes:
            images = crops(task, args, size)
            scale = levels[0] if SETS[task].level == "scale" else None
            count = dipcore.preset_for(task, preset="paper", scale=scale).iterations
            n = config.iterations_for(task, count)
            for variant in config.variants:
                if variant == "sure" and task != "denoise":
                    continue
                s = seconds_per_iteration(task, images[0][1], levels[0], config, variant)
                fits = len(images) * len(levels)
                total += fits * n * s
                print(
                    f"  {task:8s} {size:4d}² {variant:8s} {fits:3d} fits × {n:6d} it × {1e3 * s:6.1f} ms "
                    f"= {fits * n * s / 60:6.1f} min",
                    flush=True,
                )
    print(f"  total ≈ {total / 60:.1f} min", flush=True)
    return total


def levels_of(task: str, args: argparse.Namespace) -> tuple:
    return tuple(getattr(args, SETS[task].option) or SETS[task].levels)


# --------------------------------------------------------------------------------------------------------- study


def study(args: argparse.Namespace, config: StudyConfig) -> list[dict]:
    rows = []
    for task in args.tasks:
        for size in args.sizes:
            images = crops(task, args, size)
            wmv_ms = None
            for index, (name, clean) in enumerate(images):
                for level in levels_of(task, args):
                    new = study_image(
                        task, clean, level=level, config=config, image=name, degradation_seed=args.seed + index
                    )
                    if wmv_ms is None:  # once per task and size: the deployed rule's cost at this output's shape
                        c = new[0]["crop"]
                        wmv_ms = deployed_wmv_ms((1, c[2], c[0], c[1]), config.window, config.device)
                    for row in new:
                        row["wmv_deployed_ms"] = round(wmv_ms, 3)
                        _print_row(row)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(json.dumps(row) + "\n")
                    rows += new
    return rows


def _print_row(row: dict) -> None:
    picks = row["picks"]
    wmv = picks.get(f"wmv_raw_p{row['patiences'][0]}")
    print(
        f"{row['task']:8s} {row['level']}={row['level_value']:<4} {row['image']:22s} {row['variant']:20s} "
        f"oracle {row['oracle']['psnr']:6.2f} @{row['oracle']['iteration']:<6d} fixed {picks['fixed']['psnr']:6.2f} "
        + (f"wmv_raw {wmv['psnr']:6.2f} @{wmv['iteration']:<6d} " if wmv else "")
        + f"{1e3 * row['seconds_per_iteration']:6.1f} ms/it",
        flush=True,
    )


# ----------------------------------------------------------------------------------------------------------- CLI


def _iterations(values: list[str] | None) -> dict[str, int]:
    """``--iterations 2700`` (every task) or ``denoise=2700 inpaint=6000``."""
    out: dict[str, int] = {}
    for value in values or []:
        if "=" in value:
            task, n = value.split("=", 1)
            out[task] = int(n)
        else:
            out.update(dict.fromkeys(SETS, int(value)))
    return out


def _number(value: str) -> int | float:
    """25 stays 25 (a row's level reads as the default's), 12.5 stays 12.5."""
    number = float(value)
    return int(number) if number.is_integer() else number


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--tasks", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[96], help="sides of the centre crops")
    ap.add_argument("--sigmas", nargs="+", type=_number, help=f"denoising σ (default {SETS['denoise'].levels})")
    ap.add_argument("--qualities", nargs="+", type=int, help=f"JPEG qualities (default {SETS['jpeg'].levels})")
    ap.add_argument("--drops", nargs="+", type=float, help="inpainting: fraction of pixels dropped (default 0.5)")
    ap.add_argument("--scales", nargs="+", type=int, help="SR factors (default 4)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--channels", type=int, default=32, help="the net's width at every scale")
    ap.add_argument("--iterations", nargs="+", help="N (every task) or TASK=N; default: 1.5 × the preset's count")
    ap.add_argument("--limit", type=int, help="at most this many images per set")
    ap.add_argument("--skip", type=int, default=0, help="leave out the set's first images (to split a study)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="append one JSON line per image and row to this file")
    ap.add_argument("--estimate", action="store_true", help="only print the plan and its estimated time")
    ap.add_argument("--smoke", action="store_true", help="32² crops, 8 channels, 40 iterations, one image and level")
    ap.add_argument("--summarise", metavar="JSONL", help="only print the summary of an earlier run's lines")
    args = ap.parse_args(argv)
    if args.summarise:
        rows = read_lines(Path(args.summarise).read_bytes())  # the raw lines, or them gzipped as committed
        print("\n".join(summarise(rows)))
        return 0
    config = StudyConfig(
        channels=args.channels,
        iterations=_iterations(args.iterations),
        variants=tuple(args.variants),
        seed=args.seed,
        device=args.device,
    )
    if args.smoke:
        args.sizes, args.limit = [32], 1
        for task in SETS:
            setattr(args, SETS[task].option, [SETS[task].levels[0]])
        config = dataclasses.replace(
            config, channels=8, iterations=dict.fromkeys(SETS, 40), window=5, patiences=(10, 20), smooth=5
        )
    plan(args, config)
    if args.estimate:
        return 0
    rows = study(args, config)
    print("\n".join(summarise(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
