# tf-switch: `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv and install the package (editable) on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

# The oldest Keras setup.py allows: the private-API shims
# (tf_switch/keras_internals.py) are tested on it as well as on the newest.
KERAS_OLDEST := 3.13.0
KERAS_OLDEST_DIR := .keras-$(KERAS_OLDEST)
# The tests that exercise tf_switch/keras_internals.py for real.
KERAS_INTERNALS_TESTS := tests/test_keras_internals.py tests/training/test_callbacks.py \
	tests/distribute/test_expert_parallel.py

.PHONY: setup test test-keras-oldest demo lint bench clean

$(VENV)/.installed: setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -n 2 --dist loadfile tests tf_switch training serving
	$(MAKE) test-keras-oldest

# Keras alone, shadowing the venv's copy (its dependencies are the same).
$(KERAS_OLDEST_DIR)/.installed: | setup
	$(PY) -m pip install --quiet --no-deps --target $(KERAS_OLDEST_DIR) keras==$(KERAS_OLDEST)
	touch $@

test-keras-oldest: $(KERAS_OLDEST_DIR)/.installed
	PYTHONPATH=$(KERAS_OLDEST_DIR) $(PY) -m pytest -n 2 --dist loadfile \
		-p no:cacheprovider $(KERAS_INTERNALS_TESTS)

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
	rm -rf $(VENV) $(KERAS_OLDEST_DIR) *.egg-info .pytest_cache .hypothesis
