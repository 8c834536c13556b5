# Everything a fresh machine needs: `make demo` runs the main job, `make test` proves it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install lint test demo bench mutants clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,fast,zstd,parquet,mysql,metrics,plot,dask]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check asyncsync tests benchmarks
	$(BIN)/ruff format --check asyncsync tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/asyncsync demo

bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Mutation testing of the core (docs/mutation.md); slow (~20-30 min on 2 shared cores), so not
# part of `make test`. Scope and test selection: [tool.mutmut] in pyproject.toml.
# `make mutants MUTANTS='asyncsync._retry.*'` runs a subset (mutmut name globs).
MUTANTS ?=
# mutmut (and its libcst/textual) is installed here only, not by `make install`.
mutants: install
	$(BIN)/python -m pip install -q -e '.[mutants]'
	nice -n 5 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

clean:
	rm -rf mutants $(VENV) .pytest_cache .mypy_cache .ruff_cache
