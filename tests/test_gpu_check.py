"""benchmarks/gpu_check.py runs end to end: on the CPU with tiny shapes (--dry-run); on CUDA it is the real check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO

from hftool.environment import cpu_flags


# Each of its rows repeats what a faster test holds (pretraining, SQuAD, decoding); the script itself, which
# only a GPU runs for real, is checked end to end in make test-slow.
@pytest.mark.integration
@pytest.mark.slow
def test_gpu_check_dry_run_fills_every_row(tmp_path):
    out = tmp_path / "gpu-check.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] and record["machine"]["cores"] >= 1
    isa = record["machine"]["isa"]  # a flag -> present map: each value must be this CPU's, read from its flags
    assert {"avx2", "avx512_bf16"} <= set(isa) and isa == {flag: flag in cpu_flags() for flag in isa}
    assert record["pretrain"]["steps"] == 3 and record["pretrain"]["tokens_per_s"] > 0
    assert record["pretrain"]["last_loss"] > 0
    assert record["finetune_squad"]["ok"], record["finetune_squad"]
    assert set(record["decode"]) == {"batch_1_tokens_per_s", "batch_4_tokens_per_s"}
    assert record["ddp"]["skipped"]
    for row in ("pretrain GPT-2 small shape", "fine-tune SQuAD (MiniLM)", "decode BLOOM-560m shape, batch 4",
                "DDP, 2 processes"):
        assert row in result.stdout
