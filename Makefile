# The whole set-up on a fresh machine: `make demo` or `make test`.
# torch==2.13.0 is installed explicitly first: a bare `torch` requirement pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo screenshots test bench bench-reliability fuzz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[trace,dask,dev,plots]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsesim demo -o demo/

# The README's report screenshots, taken offline in headless Chromium (Debian's chromium package).
screenshots: demo
	$(BIN)/python -m sparsesim.experiments.browser demo/report.html -o docs/

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The long reliability campaigns (about 20 minutes on 2 cores): 20 SIGKILLs per command and peak
# RSS of streamed 70B-shaped replays up to 4.7 GB; results in benchmarks/results_reliability.json
# and docs/reliability.md.
bench-reliability: $(STAMP)
	$(BIN)/python -m benchmarks.reliability

# Hostile inputs against the command line (about 12,000 cases, under 10 minutes on 2 cores): tracebacks,
# hangs, exit 0 on bad input and outputs left are findings (exit 1); results in benchmarks/results_fuzz.json.
# A fixed-seed slice runs in `make test` (tests/test_fuzz_harness.py).
fuzz: $(STAMP)
	$(BIN)/python -m benchmarks.fuzz

clean:
	rm -rf $(VENV) demo build *.egg-info
