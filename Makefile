# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned: pip takes a local CPU wheel where one lies on disk (CI), and PyPI's default
# build elsewhere (CUDA on Linux). pyproject's range then keeps whichever build is installed.
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dipflow-installed

.PHONY: demo test install clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/dipflow demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo-output .pytest_cache
