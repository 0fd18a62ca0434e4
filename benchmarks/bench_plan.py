"""The jobs of a folder of images, planned as a run without --resume plans them (`storage.iter_listing`'s folders,
`jobs.plan_stream` against an empty done-state, headers read for the packer: `jobs.with_headers`), all at once: for
the benchmarks that run a known set of images without a flow."""

from __future__ import annotations

from pipelines import jobs, storage
from pipelines.reporting import state


def planned_jobs(source: str, *, output: str, config: jobs.RunConfig, run_id: str = "bench", dataset: str = "bench"):
    """Every job of `source` in dispatch order; an image planning refuses (an unsafe key, colliding outputs) raises."""
    refused: list[dict] = []
    stream = jobs.plan_stream(
        storage.iter_listing(source),
        jobs.Plan(dataset=dataset, config=config, output=output),
        run_id=run_id,
        done=state.DoneState.load(output, None, []),
        record=refused.append,
        adopt=refused.append,
    )
    todo = list(jobs.with_headers(stream, None))
    if refused:
        raise ValueError(f"{source}: planning refused {[r['image_key'] for r in refused]}: {refused[0].get('error')}")
    return todo
