# `make train`, `make test` and `make bench` set everything up on a fresh machine (what
# `make setup` does alone), then run. The virtual environment is updated only when
# pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Quiet: setuptools' notes on editable installs are for package authors, not for users.
PIP := PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup train bind test bench bench-gpu clean

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

# Binding on the demo (ImageBind's recipe): an image-text run that never hears a clip, then an
# audio tower trained into its space with the image and text towers locked, on audio-text
# pairs only; evaluated like the main job, speech -> image retrieval included.
BIND_RUN := bind-$(shell date +%Y%m%d-%H%M%S)
bind: $(VENV)/.train-deps
	$(PY) train.py --run_name $(BIND_RUN)-image-text --model.audio null
	$(PY) train.py --run_name $(BIND_RUN)-audio --init_from runs/$(BIND_RUN)-image-text/checkpoints/step-0001200 \
		--freeze '["image", "text"]' --optim.steps 500

test: $(VENV)/.test-deps
	$(PY) -m pytest -q

bench: $(VENV)/.test-deps
	$(PY) -m bench

# On a machine with an NVIDIA GPU: the gpu tests and the GPU benchmarks, in a few minutes.
bench-gpu: $(VENV)/.test-deps
	$(PY) -m bench.bench_gpu

clean:
	rm -rf $(VENV)
