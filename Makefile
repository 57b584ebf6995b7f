# `make train` and `make test` set everything up on a fresh machine, then run.
# The virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: train test bench clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.train-deps: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.test-deps: pyproject.toml $(VENV)/.train-deps
	$(PY) -m pip install -q -e ".[demo,test]"
	touch $@

train: $(VENV)/.train-deps
	$(PY) train.py

test: $(VENV)/.test-deps
	$(PY) -m pytest -q

bench: $(VENV)/.test-deps
	$(PY) -m bench

clean:
	rm -rf $(VENV)
