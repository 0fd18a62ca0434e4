"""A source listed, or listed and planned, in one go for tests that want the whole result at once. Both take a run's
own path: `storage.iter_listing`'s folders (merged here, keys sorted) and `jobs.plan_stream` against an empty
done-state (`state.DoneState.load` with no scope: what a run without --resume plans against), headers read as a
packing run reads them (`jobs.with_headers`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipelines import jobs, storage
from pipelines.reporting import state


def listing(source: str, **options: Any) -> storage.Listing:
    """Every folder of `storage.iter_listing(source, **options)` in one `Listing`, each list sorted."""
    return merge(storage.iter_listing(source, **options))


def merge(chunks: Iterable[storage.Listing]) -> storage.Listing:
    """The folders' `Listing`s in one, each list sorted."""
    merged = storage.Listing()
    for chunk in chunks:
        merged.images.extend(chunk.images)
        merged.skipped.extend(chunk.skipped)
        merged.excluded.extend(chunk.excluded)
    merged.images.sort(key=lambda entry: entry.key)
    merged.skipped.sort()
    merged.excluded.sort()
    return merged


@dataclass
class Planned:
    jobs: list[jobs.Job]  # in the order a run dispatches them (folder by folder)
    rejected: dict[str, str]  # image key -> the message of the error row planning made for it
    rows: list[dict[str, Any]]  # every row planning recorded (error rows, skipped ones for links not followed)


def plan(
    source: str,
    *,
    config: jobs.RunConfig,
    output: str,
    run_id: str = "r",
    dataset: str = "d",
    storage_options: dict | None = None,
    **options: Any,
) -> Planned:
    """The jobs of every image under `source` (listing `options` as `storage.iter_listing` takes them)."""
    chunks = storage.iter_listing(source, storage_options=storage_options, **options)
    rows: list[dict[str, Any]] = []
    stream = jobs.plan_stream(
        chunks,
        jobs.Plan(dataset=dataset, config=config, output=output),
        run_id=run_id,
        done=state.DoneState.load(output, storage_options, []),
        record=rows.append,
        adopt=rows.append,
        storage_options=storage_options,
    )
    todo = list(jobs.with_headers(stream, storage_options))
    return Planned(todo, {r["image_key"]: r["error"] for r in rows if r["status"] == "error"}, rows)
