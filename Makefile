# `make demo`: set up .venv (first run: a few minutes) and run the swiss-roll scenario end to end;
# `make demo SCENARIO=images` / `SCENARIO=meshes`: the image and 3-D mesh scenarios.
# `make demo SCENARIO=text` (DEMO_ARGS=--quick for a small subset) runs the CLINC150 text scenario.
# `make test`: set up .venv and run the whole test suite.  `make bench`: the benchmarks.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export JINA_OPTOUT_TELEMETRY := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip 'setuptools<81' wheel
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

SCENARIO ?= swiss_roll
DEMO_ARGS ?=

demo: $(STAMP)
	$(PYTHON) -m executors.demos.$(SCENARIO) $(DEMO_ARGS)

test: $(STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider --durations=15

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_fit.py
	$(PYTHON) benchmarks/bench_miners.py
	$(PYTHON) benchmarks/bench_media.py
	PYTHONPATH=. $(PYTHON) benchmarks/bench_search.py
	PYTHONPATH=. $(PYTHON) benchmarks/bench_swap.py
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PYTHON) benchmarks/bench_text.py

clean:
	rm -rf $(VENV) results workspace
