# Everyday commands. `make demo` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-pythons lint format typecheck check docs bench bench-quick bench-scale simulate services clean

# The dev, docs and bench tools are PEP 735 dependency groups of pyproject.toml, not extras:
# installing them takes pip 25.1 or later (`pip install --group`).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e '.[all]' --group dev --group docs
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the library, every backend, the dev and docs tools

demo: $(STAMP)  ## run the demo: services publishing and consuming on the embedded backend
	$(BIN)/melange demo

services:  ## start the local brokers the tests use, if they are not running
	bash scripts/services.sh

# Most tests wait on brokers and timers more than they compute: a few more workers than cores.
TEST_WORKERS ?= 3

test: $(STAMP) services  ## run the whole test suite against the real services
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=25

# The newer CPythons of the machine, on PATH or installed by pyenv: every one found is
# supported, so the whole suite runs on each (a virtualenv .venv-3.X apiece).
NEWER_PYTHONS = $(shell for v in 3.12 3.13 3.14 3.15; do \
	for p in python$$v "$$(pyenv root 2>/dev/null)"/versions/$$v*/bin/python$$v; do \
		if "$$p" --version >/dev/null 2>&1; then echo "$$p"; break; fi; \
	done; done)

test-pythons: services  ## the whole test suite on every newer Python 3 of the machine
	@test -n "$(NEWER_PYTHONS)" || { echo "no Python newer than 3.11 found"; exit 1; }
	@set -e; for py in $(NEWER_PYTHONS); do \
		venv=.venv-$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		echo "== $$("$$py" --version) in $$venv"; \
		test -x $$venv/bin/python || "$$py" -m venv $$venv; \
		$$venv/bin/python -m pip install --quiet --upgrade 'pip>=25.1'; \
		$$venv/bin/python -m pip install --quiet -e '.[all]' --group dev --group docs; \
		$$venv/bin/python -m pytest -n $(TEST_WORKERS) --dist worksteal -p no:cacheprovider; \
	done

lint: $(STAMP)  ## ruff lint and format check, mypy strict
	$(BIN)/ruff check src tests benchmarks docs/hooks
	$(BIN)/ruff format --check src tests benchmarks docs/hooks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

check: lint test  ## everything CI runs

docs: $(STAMP)  ## build the documentation site into site/
	$(BIN)/mkdocs build --strict

bench: $(STAMP) services  ## full benchmark run (writes docs/benchmarks/results.md, .json, chart.png)
	$(BIN)/python -m pip install --quiet --group bench
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP) services  ## benchmark smoke run, under two minutes
	$(BIN)/python -m pip install --quiet --group bench
	$(BIN)/python -m benchmarks --quick

bench-scale: $(STAMP)  ## the embedded backends at depths of 1k, 100k and 1M messages
	$(BIN)/python -m benchmarks.scale --out docs/benchmarks

simulate: $(STAMP)  ## deterministic simulation of the dispatch engine under faults (SEEDS=1000000)
	$(BIN)/python -m melange.simulation --seeds $(or $(SEEDS),1000000)

clean:
	rm -rf $(VENV) .venv-3.* build dist site .pytest_cache .mypy_cache .ruff_cache
