"""What a run restores and how, declared once: `RestoreSettings` (``dipflow restore``, ``restore-image``, the flow
``restore_dataset``) and `EvaluationSettings` (``dipflow evaluate``, ``demo``, the flow ``evaluate``).

Each is one flow parameter — Prefect 3 shows a ``BaseModel`` parameter as one typed, validated form and validates a
plain dict into it (a deployment's ``settings: {task: denoise, preset: fast}``) — and one group of command-line flags
(`pipelines.fields`: a field with a `Flag` is an option, parsed by its own type). One name per knob in every command:
``stopping`` is the same field with the same values in ``restore`` and ``evaluate``. Unknown fields are refused, so a
misspelt setting fails the run instead of running the default. The planner resolves a model once per dataset into
what every job carries (`pipelines.jobs.run_config`).

Imports pydantic only: the CLI reads it to build its parser, and ``dipflow --help`` must stay quick.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from pipelines.fields import Flag

__all__ = [
    "DEFAULT_STALE_AFTER",
    "STOPPING",
    "EvaluationSettings",
    "RestoreSettings",
    "RunOptions",
    "Selection",
    "Settings",
    "Task",
]

DEFAULT_STALE_AFTER = 600.0  # seconds without a heartbeat after which a run's lease is taken over (pipelines.lease)

# dipcore.TASKS, spelled out so that building the parser does not import torch (a test keeps them equal).
Task = Literal["denoise", "jpeg", "sr", "inpaint", "flash_noflash", "preimage", "reconstruct"]

# `stopping` -> dipcore's early_stopping: the task's default, self-validation, the running-variance rule acted on,
# the same rule only recorded beside the full count, or the preset's fixed count (the paper's loop).
STOPPING: dict[str, bool | str | None] = {
    "default": None,
    "selfval": "selfval",
    "variance": True,
    "observe": "observe",
    "off": False,
}

_STOPPING_HELP = (
    "when a fit stops without ground truth: default (the task's: denoise finds its count by self-validation, the "
    "others run the preset's count), selfval (the count found on held-out pixels, then a refit on all), variance "
    "(the running-variance rule), observe (the full count, with where the variance rule would stop and its PSNR "
    "recorded), off (the preset's count: the paper's loop)"
)


class Settings(BaseModel):
    """The settings every restoring command shares: the task, the preset and what changes it, the seed, stopping."""

    # Frozen: an instance is a safe default argument of the flows, and one run's settings cannot change under it.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    task: Annotated[Task, Flag("TASK")] = Field(description="what to undo")
    scale: Annotated[PositiveInt | None, Flag("N")] = Field(None, description="super-resolution factor (sr; default 4)")
    preset: Annotated[Literal["paper", "fast"], Flag("NAME", group="restoration")] = Field(
        "paper", description="paper: the published settings (default); fast: a narrow net and a short run for CPUs"
    )
    iterations: Annotated[PositiveInt | None, Flag("N", group="restoration")] = Field(
        None, description="optimisation steps (default: the preset's)"
    )
    channels: Annotated[PositiveInt | None, Flag("N", group="restoration")] = Field(
        None, description="channels at every scale of the net (default: the preset's)"
    )
    seed: Annotated[NonNegativeInt, Flag("N", group="restoration")] = Field(
        0, description="seed of the net's initialisation and input (default 0)"
    )
    stopping: Annotated[Literal["default", "selfval", "variance", "observe", "off"], Flag("RULE")] = Field(
        "default", description=_STOPPING_HELP
    )
    # No Flag: any other dipcore.TaskPreset field or net option (lr, reg_noise_std, net, ema, …), from the API and
    # Prefect; an unknown name is refused when the run resolves its settings.
    overrides: dict[str, Any] | None = Field(None, description="any other setting of dipcore's preset, by name")

    def early_stopping(self) -> bool | str | None:
        """dipcore's ``early_stopping`` for `stopping`."""
        return STOPPING[self.stopping]

    def preset_overrides(self) -> dict[str, Any]:
        """What changes the preset besides the task, scale, iterations and stopping: `channels` and `overrides`."""
        return {**(self.overrides or {}), **({"channels": self.channels} if self.channels else {})}


class RestoreSettings(Settings):
    """How each image of a dataset (or the one image of ``restore-image``) is restored."""

    variant: Annotated[str | None, Flag("NAME")] = Field(
        None, description="task variant (inpaint: random|text|large|region; denoise: sigma25|sigma50)"
    )


class EvaluationSettings(Settings):
    """How benchmarks are degraded and scored with the paper's protocol, and how they are restored."""

    task: Annotated[Task | None, Flag("TASK")] = Field(
        None, description="task for every benchmark (default: each benchmark's own)"
    )
    sigma: Annotated[PositiveFloat | None, Flag("S")] = Field(
        None, description="denoising noise level in 0-255 units (default 25)"
    )
    crop: Annotated[PositiveInt | None, Flag("SIZE")] = Field(
        None, description="centre-crop clean images to SIZE² (smoke runs)"
    )
    stopping: Annotated[Literal["default", "selfval", "variance", "observe", "off"], Flag("RULE", group="protocol")] = (
        Field("observe", description=_STOPPING_HELP.replace("observe (", "observe (this command's default: "))
    )
    # The benchmarks' own counts are spelled out: importing their registry here would tie planning to evaluation
    # (tests/test_cli.py keeps the text equal to evaluation.benchmarks.BENCHMARKS).
    runs: Annotated[PositiveInt | None, Flag("N", group="protocol")] = Field(
        None, description="independent runs averaged per image (default: 2 for cbm3d9, as in the paper; 1 elsewhere)"
    )
    classical: Annotated[bool, Flag("", option="--no-classical", group="protocol")] = Field(
        True, description="skip the classical baselines (CBM3D or NLM for denoising, biharmonic for inpainting)"
    )


class Selection(BaseModel):
    """Which files of ``restore``'s source are images to restore, with their side inputs, and the dataset's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    glob: Annotated[str | None, Flag("GLOB", check="glob")] = Field(
        None, description="only keys matching this pattern, relative to SRC (e.g. '**/*.jpg')"
    )
    mask_dir: Annotated[str | None, Flag("URL", check="url")] = Field(
        None, description="folder of inpainting masks named like the images"
    )
    guide_suffix: Annotated[str | None, Flag("SUFFIX", check="suffix")] = Field(
        None, description="flash/no-flash: <name><SUFFIX>.png is the guide"
    )
    dataset: Annotated[str | None, Flag("NAME")] = Field(
        None, description="name of the dataset in the report (default: SRC)"
    )


class RunOptions(BaseModel):
    """How a run treats what earlier runs left in its output root: resume, the lease, files it did not write."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    resume: Annotated[bool, Flag("", option="--no-resume", group="execution")] = Field(
        True, description="restore every image, even those done by earlier runs"
    )
    limit: Annotated[PositiveInt | None, Flag("N", group="execution")] = Field(
        None, description="only the first N images (by key) of each dataset"
    )
    overwrite: Annotated[bool, Flag("", group="execution")] = Field(
        False,
        description="replace files at the outputs' places that no run into this output wrote (by default they are "
        "kept and their images get error rows)",
    )
    break_lease: Annotated[bool, Flag("", group="execution")] = Field(
        False,
        description="take over the output's lease from a run known to be dead (one run writes to an output at a time)",
    )
    lease_stale_after: Annotated[PositiveFloat, Flag("SECONDS", group="execution")] = Field(
        DEFAULT_STALE_AFTER, description="a lease without heartbeat for this long is taken over (default 600)"
    )
