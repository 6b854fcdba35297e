# hftool: `make demo` and `make test` each set everything up on a fresh clone.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hftool-installed
# On machines without an NVIDIA GPU, torch is pinned to a CPU build first so that resolving the package
# does not pull a multi-GB CUDA build. Elsewhere (CPU-only Linux outside this setup) you may want
# TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu.
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install demo test test-slow bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" >/dev/null 2>&1; then \
		$(PY) -m pip install -q "$(TORCH_CPU)" $(TORCH_INDEX); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hftool pretrain --recipe gpt2-tiny train.output_dir=runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_pretrain.py
	$(PY) benchmarks/bench_bert.py

lint: $(STAMP)
	$(VENV)/bin/ruff check hftool tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
