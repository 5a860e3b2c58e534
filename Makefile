# Two ways in: `make run` (the whole service on this box, embedded defaults) and `make test`.
# pip (not uv/poetry): torch==2.13.0 must resolve to the local CPU wheel that pip's config points at;
# other installers would fetch a multi-GB CUDA build.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Rebuilt only when pyproject.toml changes (or the venv is deleted), so `make test` starts at once.
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: install run test lint clean-var

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, alone, so the CPU wheel is what satisfies the worker extra's pin
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[worker,test]'
	@touch $@

run: install
	$(BIN)/xraysynth run $(RUN_ARGS)

# pytest's exit code is the recipe's; make itself reports any failure as 2, so `.ci/run` passes
# RC_FILE to recover pytest's own code.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ -n "$(RC_FILE)" ]; then echo $$rc > "$(RC_FILE)"; fi; exit $$rc

lint: install
	$(BIN)/python -m compileall -q service workers models migrations tests

# Forget the one-box state (SQLite fallback, S3 data, generated secrets and keys). A local PostgreSQL
# database `xraysynth` is left alone: drop it too (dropdb -h 127.0.0.1 -U postgres xraysynth) to start over.
clean-var:
	rm -rf var
