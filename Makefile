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

.PHONY: install demo test test-unit test-slow test-cpu-features bench gpu-check lint clean

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

# The fast unit layer: no subprocess, no second process, no training run of more than a few seconds.
test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The tests that depend on the CPU's features, as on an AVX2-only CPU without native bf16 (e.g. AMD Zen 3).
test-cpu-features: $(STAMP)
	HFTOOL_SIMULATE_CPU=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -m "cpu_features and not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_pretrain.py
	$(PY) benchmarks/bench_bert.py

# On a CUDA machine, under 5 minutes: pretrain, SQuAD, decode and (2+ GPUs) DDP; one table and a JSON.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check hftool tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
