# One command each: `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo demo-detection demo-instance demo-classification test test-fast lint benchmark

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m projects.segmentation.main --config configs/tiny_ade20k.py --workdir workdirs/tiny_ade20k

demo-detection: setup
	$(PY) -m projects.detection.main --config configs/tiny_coco.py --workdir workdirs/tiny_coco

demo-instance: setup
	$(PY) -m projects.detection.main --config configs/tiny_coco_instance.py --workdir workdirs/tiny_coco_instance

demo-classification: setup
	$(PY) -m projects.classification.main --config configs/tiny_classification.py --workdir workdirs/tiny_classification

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q

test-fast: setup lint
	$(PY) -m pytest -q -m "not slow"

benchmark: setup
	$(PY) benchmarks/backbone_speed.py
