"""The paper's evaluation: its benchmarks and their protocols, the classical baselines scored beside the Deep Image
Prior, and the figures the paper published.

Empty on purpose: importing the package imports neither torch nor pyarrow.
"""
