# The commands of the README: `make demo`, `make test` and `make results`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# The pins of deploy/versions.env (torch, Ray, Prefect): what CI tests is what the image and the cluster run.
# torch goes first: pip takes a local CPU wheel where one lies on disk (CI), and PyPI's default build elsewhere
# (CUDA on Linux); pyproject's range then keeps whichever build is installed. `make TORCH_VERSION=…` overrides.
include deploy/versions.env
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dipflow-installed

.PHONY: demo test test-fast lint results reliability install clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml deploy/versions.env | $(PY)
	$(PY) -m pip install "torch==$(TORCH_VERSION)" "ray==$(RAY_VERSION)" "prefect==$(PREFECT_VERSION)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/dipflow demo

# The suite on pytest-xdist workers, one per core up to 4 (each with one torch thread: tests/conftest.py); much of
# it waits on Prefect, Ray and subprocesses starting, so two workers on CI's 2 cores take 11.5 min, not 17.
# worksteal: the long fault-suite runs do not end up queued behind each other on one worker.
PYTEST_PARALLEL ?= -n auto --maxprocesses 4 --dist worksteal

# The lint and format gate first (seconds), then the suite.
test: lint
	$(PY) -m pytest $(PYTEST_PARALLEL)

# While working: the suite without the tests marked slow (long fits, the deployment end to end, multi-node Ray).
test-fast: lint
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# docs/results.md from the committed Parquet reports and the hand-written notes; a test keeps the two equal.
results: $(STAMP)
	$(VENV)/bin/dipflow report benchmarks/results/2026-11-26-h200/set5-x4-graph benchmarks/results/2026-11-26-cpu/es-cbm3d9-crop64 benchmarks/results/2026-12-07-cpu/sr-x4-fast --markdown --notes docs/results-notes.md --output docs/results.md --stopping-study benchmarks/results/2026-12-03-cpu/stopping_denoise.jsonl.gz benchmarks/results/2026-12-03b-cpu/stopping_denoise.jsonl.gz benchmarks/results/2026-12-03c-cpu/stopping_denoise_128.jsonl.gz benchmarks/results/2026-12-03c-cpu/stopping_denoise_256.jsonl.gz benchmarks/results/2026-12-03c-cpu/stopping_denoise_width128.jsonl.gz benchmarks/results/2026-12-03b-cpu/stopping_jpeg.jsonl.gz benchmarks/results/2026-12-03c-cpu/stopping_sr.jsonl.gz benchmarks/results/2026-12-03c-cpu/stopping_inpaint.jsonl.gz

# docs/reliability.md: the fault suite (tests/faults) run with its ledger written, then rendered with the notes.
reliability: $(STAMP)
	DIPFLOW_RELIABILITY_LEDGER=docs/reliability-ledger.jsonl $(PY) -m pytest tests/faults -p no:cacheprovider \
		--ignore tests/faults/test_reliability_page.py
	$(PY) tests/faults/reliability_page.py docs/reliability-ledger.jsonl --notes docs/reliability-notes.md \
		--output docs/reliability.md

clean:
	rm -rf $(VENV) demo-output .pytest_cache

