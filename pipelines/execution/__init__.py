"""Running jobs: one device (`restorer`), which jobs share a batch (`packing`), and Ray actors with their driver loop
(`workers`, the only module of `pipelines` that imports Ray).

Empty on purpose: importing the package imports neither torch nor Ray.
"""
