"""Where and how a run's jobs execute, declared once: the flows' ``execution`` parameter and the CLI's "execution"
options are both built from `Execution`.

It is a pydantic model because Prefect 3 shows a ``BaseModel`` parameter as one typed, validated form in its UI and
validates a plain dict into it (a deployment's ``execution: {ray_address: auto}``, a call's
``execution={"pack": 2}``); unknown fields are refused, so a misspelt one fails the run instead of being ignored.
The CLI makes one option per field that carries a `Flag` (`pipelines.fields`): the field's type and bounds parse the
text (a bad value is a usage error), its description is the help. None of it changes results, so none of it is in
the config hash.

Imports pydantic only: the CLI reads it to build its parser, and ``dipflow --help`` must stay quick.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

from pipelines.fields import Flag

__all__ = ["Execution", "Pack", "autocast", "compile_net"]

Pack = int | Literal["auto"]  # jobs per batch: a number (1 = off), or "auto" (decided by the actor's device)


class Execution(BaseModel):
    """Where and how jobs run: the Ray cluster, the actors' resources, retries, timeouts and packing."""

    # Frozen: an instance is a safe default argument of the flows, and one run's options cannot change under it.
    # No inf or NaN: "--gpus-per-worker inf" is no request Ray could place, "--job-timeout nan" no limit at all.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    ray_address: Annotated[str | None, Flag("ADDR", group="execution")] = Field(
        None,
        description="join this Ray cluster (head-host:6379, or auto: the one `ray start` started last on this "
        "machine); default: RAY_ADDRESS when it is set, else a private Ray on this machine",
    )
    ray_connect_timeout: Annotated[PositiveFloat, Flag("S", group="execution")] = Field(
        30.0, description="seconds to reach the Ray cluster before the run gives up, writing nothing (default 30)"
    )
    local_paths_shared: Annotated[bool, Flag("", group="execution")] = Field(
        False,
        description="local paths name one filesystem that every node mounts at the same place (NFS, …): run "
        "with them on a cluster of several nodes, where they are refused (each node has its own disk)",
    )
    gpus_per_worker: Annotated[NonNegativeFloat, Flag("G", group="execution")] = Field(
        1.0, description="GPUs per actor; 0.5 packs two small-image actors on a GPU (default 1; ignored without GPUs)"
    )
    cpus_per_worker: Annotated[NonNegativeFloat | None, Flag("C", group="execution")] = Field(
        None, description="CPUs per actor (default: 1 for CPU actors, 0 beside a GPU)"
    )
    num_workers: Annotated[PositiveInt | None, Flag("N", "--workers", group="execution")] = Field(
        None, description="number of actors (default: as many as fit)"
    )
    max_attempts: Annotated[PositiveInt, Flag("N", group="execution")] = Field(
        3, description="attempts per image when its worker dies (default 3)"
    )
    job_timeout: Annotated[PositiveFloat | None, Flag("S", group="execution")] = Field(
        None, description="seconds per attempt (per image of a packed call) before the worker is replaced"
    )
    pack: Annotated[Literal["auto"] | PositiveInt, Flag("K", group="execution")] = Field(
        "auto",
        description="images of one shape per batch on a worker; auto (default): one per thread on CPU workers "
        "(side by side), as many as the GPU's free memory holds (at most 8, stacked) on GPU workers; 1: off",
    )
    precision: Annotated[Literal["auto", "fp32", "bf16"], Flag("P", group="execution")] = Field(
        "auto",
        description="the net's arithmetic: auto (default): bf16 for denoising and SR on CPUs with native bf16 "
        "units (AVX512-BF16, AMX) and images large enough to gain, else fp32; fp32 or bf16 force one (the row's "
        "engine_json says which ran)",
    )
    compile: Annotated[Literal["auto", "on", "off"], Flag("WHEN", group="execution")] = Field(
        "auto",
        description="torch.compile of the net's forward pass, once per net and canvas bucket on each worker: auto "
        "(default): dipcore's default, off until the GPU suite has measured it; on or off force it (the row's "
        "engine_json says which ran)",
    )
    # No Flag: the CLI always lets "auto" choose (it never hands a run memory:// storage).
    executor: Literal["auto", "ray", "inline"] = Field(
        "auto",
        description="ray: Ray actors; inline: in the flow's own process, without Ray (process-local storage such "
        "as memory://, debugging); auto (default): inline when the storage is memory://, else ray",
    )

    def joins_cluster(self) -> bool:
        """Whether a run on Ray joins a cluster (an address, or RAY_ADDRESS as a Ray job has it) rather than
        starting a private instance."""
        return self.ray_address != "local" and (self.ray_address is not None or bool(os.environ.get("RAY_ADDRESS")))


def autocast(precision: str) -> str | None:
    """``dipcore.EngineOptions``'s ``autocast`` for a `precision` (None: dipcore decides)."""
    return {"auto": None, "fp32": "off", "bf16": "bf16"}[precision]


def compile_net(when: str) -> bool | None:
    """``dipcore.EngineOptions``'s ``compile`` for a `compile` field (None: dipcore decides)."""
    return {"auto": None, "on": True, "off": False}[when]
