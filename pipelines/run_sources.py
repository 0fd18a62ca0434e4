"""A run's sources: the benchmarks' folders and evaluation plans, and each listing as the run reads it — primed up to
its first image (a source without any fails before anything is written) and timed, the tracker told after each
folder."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from pipelines import storage
from pipelines.evaluation.benchmarks import BENCHMARKS
from pipelines.evaluation.protocols import evaluation_config
from pipelines.jobs import Plan
from pipelines.run_tracker import Clock

if TYPE_CHECKING:
    from pipelines.settings import EvaluationSettings


def benchmark_source(name: str, data_root: str) -> tuple[str, str]:
    """(source URL, dataset name): a known benchmark under `data_root`, else `name` is itself a folder URL."""
    if name in BENCHMARKS:
        return storage.join(data_root, name), name
    last = name.rstrip("/").rpartition("/")[2] or "dataset"
    try:
        return name, storage.safe_key(last)
    except storage.UnsafeKeyError:
        return name, "dataset"


def check_datasets(benchmarks: list[str], datasets: list[str], output: str, so: dict | None) -> None:
    """Refuse two benchmarks whose outputs would share ``<output>/<dataset>/`` (one named twice, or two folders
    with one name): their outputs and rows would overwrite each other's."""
    folds = storage.folds_case(output, so)
    seen: dict[str, str] = {}
    for name, dataset in zip(benchmarks, datasets, strict=True):
        first = seen.setdefault(storage.fold(dataset) if folds else dataset, name)
        if first != name or benchmarks.count(name) > 1:
            raise storage.OutputOverlapError(
                f"benchmarks {first!r} and {name!r} would both write to {storage.redact(storage.join(output, dataset))}"
                "/: name each benchmark once, and give folders of clean images distinct names"
            )


def evaluation_sources(
    benchmarks: list[str], sources: list[tuple[str, str]], *, output: str, so: dict | None, settings: EvaluationSettings
) -> list[tuple[Plan, Callable[[], Iterable[storage.Listing]]]]:
    """One plan per benchmark, with its evaluation config, and its listing (the output root left out)."""
    out = []
    for name, (source, dataset) in zip(benchmarks, sources, strict=True):
        plan = Plan(
            dataset=dataset,
            config=evaluation_config(name, settings),
            output=storage.join(output, dataset),
            source=storage.redact(source),
        )
        out.append((plan, functools.partial(storage.iter_listing, source, storage_options=so, exclude=output)))
    return out


def in_memory(*urls: str | None) -> bool:
    """memory:// is private to this process: Ray workers could neither read nor write it."""
    return any(u is not None and u.startswith("memory://") for u in urls)


def timed(
    chunks: Iterable[storage.Listing], plan: Plan, clock: Clock, on_chunk: Callable[[], None]
) -> Iterator[storage.Listing]:
    """`chunks` as they come, telling the tracker after each, and noting when the listing ended."""
    for chunk in chunks:
        yield chunk
        on_chunk()
    plan.listing_seconds = clock.since()
    on_chunk()


def primed(plan: Plan, chunks: Iterable[storage.Listing]) -> Iterator[storage.Listing]:
    """`chunks`, listed up to the first folder with an image in it; a dataset without any image raises
    `StorageNotFoundError`, saying what the source holds instead."""
    it = iter(chunks)
    pulled: list[storage.Listing] = []
    for chunk in it:
        pulled.append(chunk)
        if chunk.images or chunk.excluded:
            return itertools.chain(pulled, it)
    raise storage.StorageNotFoundError(nothing_to_restore(plan.dataset, [s for c in pulled for s in c.skipped]))


def nothing_to_restore(dataset: str, not_images: list[tuple[str, str]]) -> str:
    """Why a dataset has no image to restore: an empty source, or what its files are instead."""
    if not not_images:
        return f"no images in dataset {dataset}: the source holds no files"
    reasons: dict[str, int] = {}
    for _key, why in not_images:
        reasons[why] = reasons.get(why, 0) + 1
    shown = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:4])
    return f"no images in dataset {dataset}: {len(not_images)} file(s), none to restore ({shown})"
