"""hftool: one CLI for the life of a transformer, on the Hugging Face stack."""

import os as _os

__version__ = "0.1.0"

# HFTOOL_SIMULATE_CPU=avx2 runs as if on an AVX2-only CPU: hftool's own checks read it (hftool/environment.py),
# and, set before torch loads, these make oneDNN and ATen pick the AVX2 kernels such a CPU would get.
if _os.environ.get("HFTOOL_SIMULATE_CPU", "").strip().lower() == "avx2":
    _os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    _os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
