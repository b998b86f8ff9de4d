# tf-switch: `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv and install the package (editable) on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup test demo lint bench clean

$(VENV)/.installed: setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -n 2 --dist loadfile tests tf_switch training serving

demo: setup
	$(PY) -m training.train --output runs/demo --epochs 4 --steps-per-epoch 150

lint: setup
	$(PY) -m ruff check tf_switch training serving tests benchmarks
	$(PY) -m ruff format --check tf_switch training serving tests benchmarks

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/layer_speed.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
