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

.PHONY: install run test lint clean-var default-model

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, alone, so the CPU wheel is what satisfies the worker extra's pin
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[worker,test]'
	@touch $@

# Log lines as readable text for a person reading var/logs/*.log (deployed services write JSON lines).
run: install
	XRAYSYNTH_LOG_FORMAT=$${XRAYSYNTH_LOG_FORMAT:-console} $(BIN)/xraysynth run $(RUN_ARGS)

# pytest's exit code is the recipe's; make itself reports any failure as 2, so `.ci/run` passes
# RC_FILE to recover pytest's own code.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ -n "$(RC_FILE)" ]; then echo $$rc > "$(RC_FILE)"; fi; exit $$rc

# ruff (rules in pyproject.toml) and the layout rules: dependencies one way, no import circles, lazy
# imports of our own code say why. --noconftest: the layout test needs none of the test services.
lint: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider --noconftest tests/test_layout.py

# Forget the one-box state (SQLite fallback, S3 data, generated secrets and keys). A local PostgreSQL
# database `xraysynth` is left alone: drop it too (dropdb -h 127.0.0.1 -U postgres xraysynth) to start over.
clean-var:
	rm -rf var

# How models/checkpoints/default was made (CPU: ~2 h; on a GPU raise GAN_MINUTES' worth of --iters).
# Everything but the packaged checkpoint stays under runs/ (hospital zone, git-ignored).
DATA ?= ../shared/data/cxr
GAN_MINUTES ?= 85
default-model: install
	$(BIN)/xraysynth ingest $(DATA) --labels $(DATA)/labels.csv --out runs/trainset
	$(BIN)/xraysynth train classifier --trainset runs/trainset --out runs/classifier
	$(BIN)/xraysynth train gan --trainset runs/trainset --classifier runs/classifier/classifier.pt --out runs/gan --minutes $(GAN_MINUTES)
	$(BIN)/python -m models.privacy.report --bundle runs/gan/bundle.pt --trainset runs/trainset --out runs/privacy --write-card
	$(BIN)/xraysynth evaluate runs/gan/bundle.pt --trainset runs/trainset --no-membership
	$(BIN)/xraysynth models package runs/gan/bundle.pt
	$(BIN)/xraysynth preview models/checkpoints/default/bundle.pt --out runs/grid.png
