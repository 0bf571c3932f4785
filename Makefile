# `make demo` and `make test` work on a fresh machine: both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean bench realdata mutation

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidcls demo runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# ruff (lint rules and format check) and mypy (default, non-strict checks on src/vidcls): pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/loader.py runs/bench-features

# The recipe on aeon's public real sequence sets against published peers (benchmarks/realdata.py;
# about 25 min on 2 cores). Its last line is mean_gap_to_best_peer=<...>. aeon comes with the `bench` extra.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

realdata: $(BENCH_STAMP)
	$(PY) benchmarks/realdata.py

# Mutation testing of the code that decides results (tools/mutation.py; about 10 min on 2 cores).
# Its last line is killed_share=<killed / (killed + survived)>. mutmut comes with the `mutation` extra.
MUTATION_STAMP := $(VENV)/.installed-mutation

$(MUTATION_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev,mutation]'
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	$(PY) tools/mutation.py

clean:
	rm -rf runs .pytest_cache
