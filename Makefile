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

.PHONY: install run test lint clean-var default-model continue-default default-card

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

# Continue the shipped default where it left off (CPU or GPU), run after run, then remake its card and
# ship it: `make continue-default GAN_MINUTES=120`. The run folder keeps optimisers and RNG between
# runs; without it (a new machine) training starts from the shipped bundle's own G and D, keeping its
# classifier and re-identification verifier. Compare val FD and recall before shipping (models/README.md).
RUN ?= runs/gan_continue
THREADS ?= 2
continue-default: install
	test -f runs/trainset/trainset.json || $(BIN)/xraysynth ingest $(DATA) --labels $(DATA)/labels.csv --out runs/trainset
	$(BIN)/xraysynth train gan --trainset runs/trainset --resume $(RUN) --out $(RUN) \
		--classifier models/checkpoints/default/bundle.pt --minutes $(GAN_MINUTES) --threads $(THREADS)
	$(MAKE) --no-print-directory default-card BUNDLE=$(RUN)/bundle.pt

# Every generator-dependent section of a bundle's card, then package it as the shipped default. The
# classifier, the verifier and its figures on real patients come with the bundle unchanged.
BUNDLE ?= $(RUN)/bundle.pt
SEED_EXPERIMENT := $(BIN)/python -m models.seed_experiment --bundle $(BUNDLE) --trainset runs/trainset \
	--target 300 --epochs 2 --width 8 --seeds 0,1,2 --threads $(THREADS) --write-card
default-card: install
	$(BIN)/python -m models.privacy.report --bundle $(BUNDLE) --trainset runs/trainset --out runs/privacy \
		--threads $(THREADS) --write-card
	$(BIN)/xraysynth evaluate $(BUNDLE) --trainset runs/trainset --no-membership --threads $(THREADS)
	$(BIN)/python -m models.faithfulness --bundle $(BUNDLE) --trainset runs/trainset --threads $(THREADS) \
		--out runs/faithfulness.json --write-card
	$(SEED_EXPERIMENT) --classes seed --out runs/seed_experiment_seed.json
	$(SEED_EXPERIMENT) --classes all --out runs/seed_experiment_all.json
	$(BIN)/xraysynth models package $(BUNDLE)
	$(BIN)/xraysynth preview models/checkpoints/default/bundle.pt --out runs/grid.png
