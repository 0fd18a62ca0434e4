"""pipelines: dataset-scale restoration with dipcore — fsspec storage, Ray GPU actors, Parquet reports, Prefect flows.

The top level holds what the layers share and what ties them together (errors, storage, jobs, flows, cli);
`evaluation` knows the paper, `execution` runs jobs, `reporting` turns rows into reports (docs/architecture.md).
Heavy imports (Ray, Prefect) live inside the modules that need them, so ``dipflow --help`` stays instant.
"""
