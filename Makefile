# One-command entry points. `make run` trains and tests the default model (p4sa) on the real
# digits of rotMNIST5k for QUICK_EPOCHS epochs; `make test` runs the test suite. Both create
# `.venv` first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
QUICK_EPOCHS ?= 2

.PHONY: setup run test clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# Each `make run` trains the quick start afresh (overwrite), so it can be run again and again.
run: setup
	$(PY) main.py --config.epochs=$(QUICK_EPOCHS) --config.rotation_angles=4 --config.overwrite=True

test: setup
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) .pytest_cache
