"""Task presets: the published settings of every experiment of the paper, one frozen dataclass each.

Sources: the paper (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018) and the notebooks of its published
code (DmitryUlyanov/deep-image-prior); ``shared/REFERENCE.md`` gathers the figures. ``preset="fast"`` keeps a task's
structure but narrows the net and shortens the run so that it is usable on a CPU.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Literal

from . import nets
from .errors import ConfigError
from .preset import HOURGLASS, TaskPreset
from .task_defs import TASK_DEFS, get_task

__all__ = ["TASKS", "VARIANTS", "TaskPreset", "apply_overrides", "get_preset", "preset_for"]

TASKS = tuple(TASK_DEFS)  # the task strings, in the paper's order; what each one is: task_defs.py
VARIANTS = {"inpaint": ("random", "text", "large", "region"), "denoise": ("sigma25", "sigma50")}


def _skip(**changes: Any) -> Mapping[str, Any]:
    return {**HOURGLASS, **changes}


# Denoising σ=25, the 9-image table: 1800 steps in the paper (29.22 dB; the code runs 3000), EMA 0.99 (30.43 dB),
# jitter 1/30 and backtracking as in the code.
_DENOISE_25 = TaskPreset(
    "denoise", "sigma25", iterations=1800, reg_noise_std=1 / 30, ema=0.99, output="average", backtrack=True, sigma=25
)

# One entry per (task, variant); the first variant of a task is its default.
_PAPER: dict[tuple[str, str | None], TaskPreset] = {
    ("denoise", "sigma25"): _DENOISE_25,
    # σ=50: the same run with more jitter.
    ("denoise", "sigma50"): dataclasses.replace(_DENOISE_25, variant="sigma50", reg_noise_std=1 / 20, sigma=50),
    # Blind JPEG restoration (snail): 3-channel input, a narrow net with skips only at the two deepest scales.
    ("jpeg", None): TaskPreset(
        "jpeg",
        net_options=_skip(
            channels_down=(8, 16, 32, 64, 128), channels_up=(8, 16, 32, 64, 128), channels_skip=(0, 0, 0, 4, 4)
        ),
        input_depth=3,
        iterations=2400,
        reg_noise_std=1 / 30,
        ema=0.99,
        output="average",
    ),
    # Super-resolution through a Lanczos-2 downsampler: ×4 2000 steps / jitter 0.03, ×8 4000 / 0.05 (code).
    ("sr", None): TaskPreset("sr", iterations=2000, reg_noise_std=0.03, scale=4),
    # Inpainting, Table 1: 50 % of pixels dropped, default net, LR 0.001, 11000 steps.
    ("inpaint", "random"): TaskPreset("inpaint", "random", lr=0.001, iterations=11000, reg_noise_std=0.03, drop=0.5),
    # Text inpainting (kate): 128 skip channels, nearest upsampling, 6001 steps.
    ("inpaint", "text"): TaskPreset(
        "inpaint",
        "text",
        net_options=_skip(channels_skip=(128,) * 5, upsample="nearest"),
        iterations=6001,
        reg_noise_std=0.03,
    ),
    # Large holes (vase): a meshgrid input, no skip connections, nearest upsampling, 5001 steps.
    ("inpaint", "large"): TaskPreset(
        "inpaint",
        "large",
        net_options=_skip(channels_skip=(0,) * 5, upsample="nearest"),
        input="meshgrid",
        input_depth=2,
        iterations=5001,
        reg_noise_std=0.03,
    ),
    # Region inpainting (library): 6 scales, no skips, 5×5 filters down, a 1-channel code, no jitter, 3001 steps.
    ("inpaint", "region"): TaskPreset(
        "inpaint",
        "region",
        net_options=_skip(
            channels_down=(16, 32, 64, 128, 128, 128),
            channels_up=(16, 32, 64, 128, 128, 128),
            channels_skip=(0,) * 6,
            filter_size_down=5,
            upsample="nearest",
        ),
        input_depth=1,
        iterations=3001,
    ),
    # Flash/no-flash: the flash image is the input code, the no-flash image the target; LR 0.1, 601 steps.
    ("flash_noflash", None): TaskPreset("flash_noflash", input="guide", input_depth=3, lr=0.1, iterations=601),
    # Natural pre-image of AlexNet fc6: 6 scales, large filters, average-pool down, nearest up, zero padding.
    ("preimage", None): TaskPreset(
        "preimage",
        net_options={
            "channels_down": (16, 32, 64, 128, 128, 128),
            "channels_up": (16, 32, 64, 128, 128, 128),
            "channels_skip": (4,) * 6,
            "filter_size_down": (7, 7, 5, 5, 3, 3),
            "filter_size_up": (7, 7, 5, 5, 3, 3),
            "downsample": "avg",
            "upsample": "nearest",
            "pad": "zero",
        },
        lr=0.001,
        iterations=3100,
        layer="fc6",
    ),
    # Figure 2: a plain fit of f_θ(z) to an image (natural, noisy, shuffled or noise) — no jitter, no averaging.
    ("reconstruct", None): TaskPreset("reconstruct", iterations=2400),
}

_SCALED = [name for name, t in TASK_DEFS.items() if t.scaled]  # the tasks with a `scale`: SR
_SR_BY_SCALE = {2: (2000, 0.03), 4: (2000, 0.03), 8: (4000, 0.05)}  # (iterations, jitter) per factor

# "fast": the same structure, 32 channels a scale and a short run (~20 ms/iteration at 64² on 2 CPU cores).
_FAST_CHANNELS = 32
_FAST_ITERATIONS = {"inpaint": 1200, "preimage": 300, "flash_noflash": 300}
_FAST_DEFAULT_ITERATIONS = 600
# The fast preset returns the moving average of outputs (EMA 0.99, as denoising's paper preset) where its short count
# leaves the last iterate noisy: at the same cost, +1.2 dB on Set5 ×4 and +0.8 on Set14 (all 19 images), +1.1 dB on
# the CPU preset study's SR images (issue 28; docs/results.md, "The CPU preset").
_FAST_AVERAGE = frozenset({"sr", "inpaint"})

# What the paper preset returns without ground truth, where the stopping study (issue 14, benchmarks/RESULTS.md)
# found the fixed count far from the best output: denoising's blind count, at σ = 25 and more (figures there).
# Not the paper's loop: `early_stopping=False` runs that. The fast preset keeps its short fixed count. JPEG, SR ×4
# and 50 % inpainting keep theirs: close to the best there, where self-validation did no better.
DEFAULT_STOPPING: dict[str, bool | str] = {"denoise": "selfval"}


def _default_variant(task: str, variant: str | None, sigma: float | None) -> str | None:
    """The variant a call without one runs: the task's first or, where its presets are per noise level (denoising),
    the one with the highest σ not above ``sigma``."""
    if variant is not None or task not in VARIANTS:
        return variant
    levels = [(p.sigma, v) for (t, v), p in _PAPER.items() if t == task and p.sigma is not None]
    below = [(level, v) for level, v in levels if sigma is not None and level <= sigma]
    return max(below)[1] if below else VARIANTS[task][0]


def get_preset(
    task: str,
    *,
    variant: str | None = None,
    scale: int | None = None,
    preset: Literal["paper", "fast"] = "paper",
    sigma: float | None = None,
) -> TaskPreset:
    """The published settings of ``task`` (and ``variant``: the inpainting kind, the denoising σ), or the fast ones."""
    scaled = get_task(task).scaled  # ConfigError for an unknown task
    variant = _default_variant(task, variant, sigma)
    key = (task, variant)
    if key not in _PAPER:
        valid = ", ".join(v for t, v in _PAPER if t == task and v) or "none"
        raise ConfigError(f"task {task!r} has no variant {variant!r}; variants: {valid}")
    p = _PAPER[key]
    if scaled:
        scale = 4 if scale is None else scale
        if scale < 2:
            raise ConfigError(f"super-resolution needs scale ≥ 2, got {scale}")
        iterations, jitter = _SR_BY_SCALE.get(scale, (2000 * scale // 4, 0.03 if scale < 8 else 0.05))
        p = dataclasses.replace(p, scale=scale, iterations=iterations, reg_noise_std=jitter)
    elif scale not in (None, 1):
        raise ConfigError(f"scale={scale} only applies to task {' or '.join(repr(n) for n in _SCALED)}")
    if sigma is not None:
        p = dataclasses.replace(p, sigma=sigma)
    if preset == "fast":
        p = _fast(p)
    elif preset == "paper":
        p = dataclasses.replace(p, early_stopping=DEFAULT_STOPPING.get(task, False))
    else:
        raise ConfigError(f"unknown preset {preset!r}; choose 'paper' or 'fast'")
    return p


def _fast(p: TaskPreset) -> TaskPreset:
    opts = {**p.net_options, **nets.width_options(p.net, p.net_options, _FAST_CHANNELS)}
    iterations = _FAST_ITERATIONS.get(p.task, _FAST_DEFAULT_ITERATIONS)
    lr = max(p.lr, 0.01)  # short runs need the larger step of most notebooks
    average = {"ema": p.ema or 0.99, "output": "average"} if p.task in _FAST_AVERAGE else {}
    return dataclasses.replace(p, net_options=dict(opts), iterations=iterations, lr=lr, **average)


def apply_overrides(p: TaskPreset, **overrides: Any) -> TaskPreset:
    """Change a preset: any TaskPreset field, ``channels=`` (width at every scale), ``skip_channels=``, or a net option.

    Unknown names raise ConfigError, so a typo never silently runs the default.
    """
    fields = {f.name for f in dataclasses.fields(TaskPreset)} - {"task", "net_options"}
    net_option_names = nets.option_names() - _ALIASES  # every registered builder's keywords
    opts = dict(p.net_options)
    changes: dict[str, Any] = {}
    net = overrides.get("net") or p.net
    # `net` first: another architecture starts from its own defaults, then the other overrides apply to it.
    for name, value in sorted(overrides.items(), key=lambda kv: kv[0] != "net"):
        if value is None:
            continue
        if name == "channels":
            opts.update(nets.width_options(net, opts, int(value)))  # each scale of skip's; resnet's, deep_decoder's
        elif name == "skip_channels":
            n = len(opts.get("channels_skip", (0,) * 5))
            opts["channels_skip"] = (int(value),) * n
        elif name == "net":
            changes["net"] = value
            if value != p.net:
                opts = {}  # another architecture: start from its own defaults
        elif name == "net_options":
            opts.update(value)
        elif name in fields:
            changes[name] = value
        elif name in net_option_names:
            opts[name] = tuple(value) if isinstance(value, list) else value
        else:
            raise ConfigError(
                f"unknown setting {name!r}; settings are {', '.join(sorted(fields | net_option_names | _ALIASES))}"
            )
    return dataclasses.replace(p, net_options=dict(opts), **changes)


def preset_for(task: str, **settings: Any) -> TaskPreset:
    """The preset ``restore`` runs: ``get_preset(task, …)`` with its keywords among `settings` (``variant``,
    ``scale``, ``preset``, ``sigma``), and every other setting applied as an override (``apply_overrides``).

    An unknown task, variant or override raises ConfigError here, so a planner checks a run's settings without a fit.
    """
    chosen = {k: v for k, v in settings.items() if k in _GET_PRESET_KEYWORDS}
    overrides = {k: v for k, v in settings.items() if k not in _GET_PRESET_KEYWORDS}
    return apply_overrides(get_preset(task, **chosen), **overrides)


_GET_PRESET_KEYWORDS = frozenset(inspect.signature(get_preset).parameters) - {"task"}


_ALIASES = {"channels", "skip_channels", "net_options"}
