"""The shipped accelerate configurations: each loads, is one the engine supports, and refuses absent hardware."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, tiny_pretrain_args

from hftool.config import list_accelerate_configs
from hftool.errors import HftoolError
from hftool.launch import check_accelerate_config

CONFIGS = list_accelerate_configs()  # as shipped in the package
EXPECTED = {"single-gpu": "NO", "multi-gpu": "MULTI_GPU", "multi-node": "MULTI_GPU", "fsdp": "FSDP",
            "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED", "tpu": "XLA"}


def test_every_documented_setup_is_shipped():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_is_supported(path):
    text = path.read_text()
    assert text.startswith("#") and "accelerate launch --config_file" in text
    summary = check_accelerate_config(str(path))
    assert summary["distributed_type"] == EXPECTED[path.stem]
    assert summary["mixed_precision"] == "bf16"
    if path.stem == "multi-node":
        assert summary["num_machines"] == 2 and summary["num_processes"] == 16


def test_fsdp_wraps_transformer_blocks_and_deepspeed_stages():
    import yaml

    fsdp = yaml.safe_load((REPO / "recipes/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    for stage in (2, 3):
        ds = yaml.safe_load((REPO / f"recipes/accelerate/deepspeed-zero{stage}.yaml").read_text())["deepspeed_config"]
        assert ds["zero_stage"] == stage


def test_engine_finds_the_block_class_fsdp_wraps(tiny_gpt2, tiny_bloom, tiny_bert):
    """TRANSFORMER_BASED_WRAP without class names: the engine gives FSDP each model's own block class."""
    from transformers import AutoModelForCausalLM, BertForPreTraining

    from hftool.engine.distributed import transformer_block_classes

    assert transformer_block_classes(AutoModelForCausalLM.from_pretrained(tiny_gpt2)) == ["GPT2Block"]
    assert transformer_block_classes(AutoModelForCausalLM.from_pretrained(tiny_bloom)) == ["BloomBlock"]
    assert "BertLayer" in transformer_block_classes(BertForPreTraining.from_pretrained(tiny_bert))

    class PlainStack(torch.nn.Module):  # declares nothing: the layer stack is found
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(4, 4)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))

    assert transformer_block_classes(PlainStack()) == ["Linear"]


def test_unsupported_config_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "recipes/accelerate/fsdp.yaml").read_text().replace("TRANSFORMER_BASED_WRAP", "NO_WRAP"))
    with pytest.raises(HftoolError, match="fsdp_auto_wrap_policy NO_WRAP"):
        check_accelerate_config(str(bad))


@pytest.mark.integration
# One sharded backend holds the check in make test (the same code path names either); FSDP's runs in test-slow.
@pytest.mark.parametrize("variable, message", [
    pytest.param("ACCELERATE_USE_FSDP", "asks for FSDP, which needs GPUs", marks=pytest.mark.slow),
    ("ACCELERATE_USE_DEEPSPEED", "asks for DeepSpeed, which needs GPUs"),
])
def test_sharded_launch_without_gpus_is_a_clear_error(small_corpus, tmp_path, variable, message):
    env = {**os.environ, "PYTHONPATH": str(REPO), variable: "true"}
    result = subprocess.run([sys.executable, "-m", "hftool", "pretrain",
                             *tiny_pretrain_args(small_corpus, tmp_path / "o")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr and result.stderr.strip().startswith("error:")
