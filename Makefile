# `make train`, `make test` and `make bench` set everything up on a fresh machine (what
# `make setup` does alone), then run. The virtual environment is updated only when
# pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Quiet: setuptools' notes on editable installs are for package authors, not for users.
PIP := PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup train test bench bench-gpu clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	touch $@

$(VENV)/.train-deps: pyproject.toml $(VENV)/.created
	$(PIP) -e ".[demo]"
	touch $@

$(VENV)/.test-deps: pyproject.toml $(VENV)/.train-deps
	$(PIP) -e ".[demo,test]"
	touch $@

setup: $(VENV)/.test-deps

train: $(VENV)/.train-deps
	$(PY) train.py

test: $(VENV)/.test-deps
	$(PY) -m pytest -q

bench: $(VENV)/.test-deps
	$(PY) -m bench

# On a machine with an NVIDIA GPU: the gpu tests and the GPU benchmarks, in a few minutes.
bench-gpu: $(VENV)/.test-deps
	$(PY) -m bench.bench_gpu

clean:
	rm -rf $(VENV)
