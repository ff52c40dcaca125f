# mmfind developer commands. `make test` and `make demo` work on a fresh machine:
# they create .venv and install everything first when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mmfind-installed
MODEL  ?=
DEMO_INDEX ?= $(CURDIR)/demo-index

.PHONY: install test test-slow demo lint format clean bench bench-quick

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -n auto -m "not slow"

test-slow: install
	$(PY) -m pytest -q -n auto -m slow

demo: install
	MMFIND_DEMO_MODEL="$(MODEL)" DEMO_INDEX="$(DEMO_INDEX)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy mmfind

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(DEMO_INDEX) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks of issue 5: write bench/results.json and bench/RESULTS.md (inputs generated under
# bench/corpus/, git-ignored). bench-quick: a few minutes on 2 cores; bench: 1M-vector ANN and
# larger corpora (about 20 minutes on 2 cores, half of it the 1M ANN build; 5-6 minutes
# once bench/corpus/ holds its inputs).
bench: install
	$(PY) -m bench.run --mode full --label "make bench"

bench-quick: install
	$(PY) -m bench.run --mode quick --label "make bench-quick"
