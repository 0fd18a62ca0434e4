"""The paper's evaluation protocols: which degradation each benchmark is scored on, how an evaluation job's
observation is synthesised from the clean image, and how a restoration is scored against it.

The protocols are those of the paper (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018) and of the
evaluation code its authors published (DmitryUlyanov/deep-image-prior): SR ×4 by Pillow LANCZOS with PSNR on Y
(BT.601) and 4 border pixels shaved after a centre crop to a multiple of 32; Gaussian noise of σ = 25; inpainting
with a Bernoulli mask dropping half the pixels. The driver plans with `evaluation_config`; the worker calls
`observe` and `score` (`pipelines.execution.restorer`), and the HTML report calls `synthesise` again to show the
degraded input. dipcore (torch) is imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines import storage
from pipelines.evaluation.benchmarks import BENCHMARKS
from pipelines.jobs import Job, RunConfig, Synthesis, run_config

if TYPE_CHECKING:
    from pipelines.settings import EvaluationSettings

__all__ = [
    "OBSERVED_EMA",
    "SR_CROP_MULTIPLE",
    "benchmark_synthesis",
    "evaluation_config",
    "image_seed",
    "observe",
    "psnr_protocol",
    "score",
    "synthesise",
]

SR_CROP_MULTIPLE = 32  # the authors' evaluation centre-crops the clean image to a multiple of 32 first
OBSERVED_EMA = 0.99  # the moving average an evaluation records where the preset keeps none (denoising's weight)


def benchmark_synthesis(
    name: str, *, task: str | None = None, scale: int | None = None, sigma: float | None = None, crop: int | None = None
) -> Synthesis:
    """The paper's protocol for benchmark `name` (a folder of clean images that is not one of BENCHMARKS is SR ×4),
    with a caller's task, scale, σ or smoke-run crop in place of the defaults."""
    from dipcore import get_task

    b = BENCHMARKS.get(name)
    t = get_task(task or (b.task if b else "sr"))
    # The paper's value of each knob of degrade(), kept where the task's synthesis reads it. Inpainting drops pixels
    # at random (Table 1), whatever the set; SR first centre-crops the clean image to a multiple of 32.
    paper = {
        "scale": scale or (b and b.scale) or 4,
        "sigma": sigma or (b and b.sigma) or 25.0,
        "drop": (b and b.drop) or 0.5,
        "variant": "random",
    }
    knobs = {k: v for k, v in paper.items() if k in t.degrade_args}
    return Synthesis(t.name, **knobs, crop_multiple=SR_CROP_MULTIPLE if t.scaled else None, crop_size=crop)


def evaluation_config(name: str, settings: EvaluationSettings) -> RunConfig:
    """The RunConfig of evaluating benchmark `name` with the paper's protocol (`benchmark_synthesis`, BENCHMARKS)
    and `settings`, its preset resolved once.

    ``settings.runs`` independent runs (seeds s, s + 1, …) are averaged into the returned output; default: the
    benchmark's (2 for cbm3d9, as in the paper), else 1. ``settings.classical`` scores the task's classical baseline
    beside DIP. Where the preset keeps no moving average, one is recorded beside the output (`OBSERVED_EMA`).
    """
    from dipcore import ConfigError, get_task, preset_for
    from dipcore.tasks import apply_overrides

    s = settings
    spec = benchmark_synthesis(name, task=s.task, scale=s.scale, sigma=s.sigma, crop=s.crop)
    b = BENCHMARKS.get(name)
    overrides = s.preset_overrides()
    runs = s.runs
    if runs is None:
        runs = overrides.get("restarts") or (b.runs if b and b.task == spec.task else 1)
    elif overrides.get("restarts", runs) != runs:
        raise ConfigError(f"runs={runs} and the override restarts={overrides['restarts']} disagree: give one")
    overrides["restarts"] = runs
    t = get_task(spec.task)
    p = preset_for(
        spec.task,
        variant=spec.variant,
        scale=spec.scale if t.scaled else None,
        preset=s.preset,
        # The preset records the noise level of the degradation (and picks the denoising variant by it).
        sigma=spec.sigma if "sigma" in t.degrade_args else None,
        iterations=s.iterations,
        early_stopping=s.early_stopping(),
        **overrides,
    )
    # A moving average where the preset keeps none (SR, inpainting): recorded as psnr_average beside the output the
    # preset returns, which it leaves as it is (the stopping study found SR's average 0.26 dB above its last iterate
    # on small crops; benchmarks/RESULTS.md). The paper's own settings otherwise.
    if p.ema is None and "ema" not in overrides:
        p = apply_overrides(p, ema=OBSERVED_EMA)
    return run_config(p, seed=s.seed, synthesis=spec, classical=s.classical)


# ------------------------------------------------------------------------------------------- observe and score


def image_seed(seed: int, key: str) -> int:
    """A fixed per-image seed for synthesised noise and masks: the same image gets the same degradation in every
    run, and different images get independent ones."""
    return int(storage.sha256_hex(f"{seed}:{key}".encode())[:8], 16)


def _crop_square(image: Any, size: int) -> Any:
    from dipcore import center_crop

    return center_crop(image, min(image.shape[0], size), min(image.shape[1], size))


def observe(job: Job, image: Any, read_image: Callable[[str], Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(what to restore, the ground truth or None, side inputs for ``dipcore.restore``) of a decoded input.

    A plain job restores the image itself, with its mask/guide read by `read_image`. An evaluation job treats the
    image as clean and synthesises the paper's observation from it with a fixed per-image seed (``dipcore.degrade``,
    each task reading its own knobs): SR first centre-crops to a multiple of 32 (the ground truth is that crop) and
    downscales with LANCZOS; denoising adds σ-Gaussian noise; inpainting drops pixels with a Bernoulli mask.
    """
    import dipcore
    from dipcore.observation import binary_mask

    s = job.synthesis
    if s is None:
        side = {}
        if job.mask_uri:
            try:  # checked here, before the fit: a mask that is no mask fails its own job only
                side["mask"] = binary_mask(read_image(job.mask_uri))
            except dipcore.DipcoreError as exc:  # not a mask, or no image at all: say it is the mask
                raise dipcore.ConfigError(f"{job.key}: its mask {job.mask_uri.rpartition('/')[2]}: {exc}") from None
        if job.guide_uri:
            side["guide"] = read_image(job.guide_uri)
        for name in dipcore.get_task(job.task).side_inputs:
            if name not in side:
                stem = job.key.rpartition("/")[2].rpartition(".")[0] or job.key
                raise dipcore.ConfigError(f"no {name} for {job.key}: {_SIDE_INPUT_HINTS[name].format(stem=stem)}")
        truth = read_image(job.reference_uri) if job.reference_uri else None
        return image, truth, side
    obs, clean = synthesise(s, image, image_seed(job.seed, job.key))
    return obs, clean, {}


def synthesise(s: Synthesis, image: Any, seed: int) -> tuple[Any, Any]:
    """(observation, ground truth) of the clean decoded `image` under `s` with the per-image `seed` (`image_seed`):
    the evaluation branch of `observe`, which the HTML report also calls to show the degraded input."""
    import dipcore
    from dipcore import center_crop_to_multiple

    clean = _crop_square(image, s.crop_size) if s.crop_size else image
    if multiple := s.clean_multiple():
        clean = center_crop_to_multiple(clean, multiple)
    knobs = {"scale": s.scale, "sigma": s.sigma, "drop": s.drop, "variant": s.variant}
    return dipcore.degrade(clean, task=s.task, seed=seed, **knobs), clean


# How a plain run finds each side input a task needs (pipelines.storage.iter_listing).
_SIDE_INPUT_HINTS = {
    "mask": "none named {stem}_mask.<ext> beside it, nor {stem}.<ext> or {stem}_mask.<ext> at its place in a mask "
    "folder (--mask-dir); white marks a known pixel",
    "guide": "put {stem}<SUFFIX>.png beside it and pass --guide-suffix SUFFIX",
}


def _crop_label(s: Synthesis | None) -> str | None:
    if s is None:
        return None
    parts = ([f"{s.crop_size}x{s.crop_size}"] if s.crop_size else []) + (
        [f"center{s.crop_multiple}"] if s.crop_multiple else []
    )
    return "+".join(parts) or None


def psnr_protocol(job: Job) -> dict[str, Any]:
    """How the job's PSNRs are measured (``dipcore.psnr``'s keywords): the task's protocol (``Task.psnr_protocol``):
    for SR, BT.601 Y with `scale` border pixels shaved (an evaluation's clean image is already centre-cropped to a
    multiple of 32); else all channels."""
    from dipcore import get_task

    protocol = get_task(job.task).psnr_protocol(int(job.scale or 1))
    return {"y_channel": protocol.y_channel, "shave": protocol.shave}


def score(job: Job, res: Any, obs: Any, truth: Any) -> dict[str, Any]:
    """PSNR/SSIM columns of a restoration against the ground truth (none without one), with the baseline beside it.

    Every PSNR uses `psnr_protocol(job)` — the restorer gives dipcore the same one for the curves. ``psnr`` and
    ``ssim`` score what the preset returns (the written output: with several runs, their average); ``psnr_final``
    and ``psnr_average`` are the first run's last iterate and moving average; ``psnr_best``/``iteration_best`` the
    best of its PSNR curve (an oracle); ``psnr_auto``/``iteration_auto``/``es_stop_iteration`` what the
    early-stopping rule chose (or would have, in observe mode) and where it fired; ``psnr_two_runs`` the average
    of the first two runs' returned outputs. Baseline: bicubic for SR, else the degraded input itself.
    """
    if truth is None:
        return {}
    import dipcore

    observed = getattr(obs, "image", obs)
    protocol = psnr_protocol(job)
    baseline_name, baseline = dipcore.get_task(job.task).naive(observed, int(job.scale or 1))
    channel = "y" if protocol["y_channel"] else ("rgb" if truth.shape[-1] == 3 else "gray")

    def psnr(x: Any) -> float | None:
        return dipcore.psnr(x, truth, **protocol) if x is not None and x.shape == truth.shape else None

    try:
        ssim = dipcore.ssim(res.image, truth, **protocol) if res.image.shape == truth.shape else None
    except dipcore.ConfigError:  # smaller than SSIM's 11×11 window after the shave
        ssim = None
    first = res.runs[0] if res.runs else res
    auto = first.stopping
    two = psnr((res.runs[0].image + res.runs[1].image) / 2) if len(res.runs) >= 2 else None
    return {
        "psnr": psnr(res.image),
        "psnr_average": psnr(first.average),
        "psnr_final": psnr(first.final),
        "psnr_best": res.best_psnr,
        "iteration_best": res.best_iteration,
        "psnr_channel": channel,
        "psnr_shave": protocol["shave"],
        "psnr_crop": _crop_label(job.synthesis),
        "ssim": ssim,
        "baseline_name": baseline_name,
        "psnr_baseline": psnr(baseline),
        "psnr_auto": psnr(auto.image) if auto else None,
        "iteration_auto": auto.iteration if auto else None,
        "es_stop_iteration": auto.fired_at if auto else None,
        "psnr_two_runs": two,
    }
