"""pipelines: dataset-scale restoration with dipcore — fsspec storage, Ray GPU actors, Parquet reports, Prefect flows.

Heavy imports (Ray, Prefect) live inside the modules that need them, so ``dipflow --help`` stays instant.
"""
