#!/usr/bin/env bash
# Thread placement on this CPU: the same bench_fit cases with OpenMP's default placement and with threads bound to
# cores, in separate processes (placement is read at start), rounds interleaved.
cd "$(dirname "$0")/../../.."
for r in 1 2 3; do
  for mode in default bound; do
    if [ $mode = bound ]; then export OMP_PROC_BIND=close OMP_PLACES=cores; else unset OMP_PROC_BIND OMP_PLACES; fi
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fit.py --device cpu --sizes 128 --engines plain optimised \
      --batch 1 2 --warmup 2 --timed 6 --out benchmarks/results/2026-12-03d-cpu/placement_$mode.jsonl > /dev/null
  done
done
echo done
