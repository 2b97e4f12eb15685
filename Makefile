# Every target bootstraps .venv itself, so a fresh clone needs only python3 (>=3.10) and make.
# CONSTRAINTS pins torch to the CPU wheel used locally and in CI; GPU users run
# `make CONSTRAINTS= model` (or install with pip themselves) to get their CUDA build of torch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints/ci.txt
EXTRAS ?= export,dev,deploy-lint
STAMP := $(VENV)/.installed
MODEL ?= models/hrnetv2_w18_wflw_dark.onnx
PYTEST_ARGS ?=

.PHONY: venv test pytest lint run run-demo model model-demo bench clean

$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

## make test: offline deployment checks, then the whole pytest suite (CPU only, no network).
test: lint pytest

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## make lint: hadolint, `docker compose config` for every profile, kubernetes schema validation.
lint: $(STAMP)
	$(BIN)/python docker/lint.py

## make model: fetch the official mmpose checkpoint (sha256-checked) and export it to ONNX.
model: $(STAMP)
	$(BIN)/python -m model_export fetch-default --output $(MODEL)

## make model-demo: an untrained (random-weights) model for trying the API offline; flagged loudly.
model-demo: $(STAMP)
	$(BIN)/python -m model_export export --random-init --output models/demo_untrained.onnx

## make run: serve $(MODEL) (or $$LANDMARKS_MODEL_PATH if set) with the settings from the environment.
run: $(STAMP)
	@if [ -z "$$LANDMARKS_MODEL_PATH" ] && [ ! -f $(MODEL) ]; then $(MAKE) model; fi
	LANDMARKS_MODEL_PATH=$${LANDMARKS_MODEL_PATH:-$(MODEL)} $(BIN)/python -m service

## make run-demo: serve the untrained demo model (works offline; every response carries a warning).
run-demo: $(STAMP)
	@test -f models/demo_untrained.onnx || $(MAKE) model-demo
	LANDMARKS_MODEL_PATH=models/demo_untrained.onnx $(BIN)/python -m service

## make bench: benchmarks (never part of make test); rewrites bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
