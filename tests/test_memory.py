"""`hftool estimate-memory` against the measured peak memory of real CPU training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, run_cli

from hftool.config import load_recipe
from hftool.environment import cpu_has_native_bf16, missing_bf16_feature
from hftool.memory import MiB, estimate, recipe_model_config
from hftool.schemas.pretrain import PretrainRecipe

# Trains the recipe's model shape and micro-batch for two steps through the engine and reports the peak resident
# memory above what the process held just before the model was built. The kernel's high-water mark is reset at
# that point (/proc/self/clear_refs), so a spike earlier in the process (imports, set-up) cannot count as the
# run's peak; where the reset is not allowed, the process's lifetime peak is used.
MEASURE = """
import json, resource, sys, tempfile
import numpy as np, psutil
from transformers import AutoModelForCausalLM
from hftool.config import load_recipe
from hftool.engine import Engine
from hftool.memory import recipe_model_config
from hftool.tasks.causal_lm import CausalLMTask
from hftool.schemas.pretrain import PretrainRecipe


def high_water_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


recipe = load_recipe(PretrainRecipe, sys.argv[1], sys.argv[2:])
config = recipe_model_config(recipe)
data = np.random.default_rng(0).integers(0, config.vocab_size, (recipe.train.batch_size * 2, recipe.data.block_size))
engine = Engine(recipe.train, tempfile.mkdtemp())
before = psutil.Process().memory_info().rss
try:
    with open("/proc/self/clear_refs", "w") as reset:
        reset.write("5")
except OSError:
    pass
model = AutoModelForCausalLM.from_config(config)
engine.fit(model, data.astype(np.int32), CausalLMTask())
print(json.dumps({"peak_mib": (high_water_bytes() - before) / 2**20}))
"""


def _measured_peak(recipe: str, precision: str) -> float:
    overrides = [f"train.mixed_precision={precision}", "train.max_steps=2", "train.report_to=none",
                 "train.log_every=1"]
    result = subprocess.run([sys.executable, "-c", MEASURE, recipe, *overrides], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


# bf16 training on a CPU that emulates it is orders of magnitude slower (benchmarks/bench_bf16.py) and hftool
# refuses it there (train.allow_slow_bf16), so the bf16 estimate is checked where the CPU has native bf16.
NATIVE_BF16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason=f"this CPU lacks {missing_bf16_feature()}")


@pytest.mark.integration
@pytest.mark.parametrize("recipe, precision", [
    ("gpt2-tiny", "no"),
    # the same check in bf16 on a 30M model: minutes of the default suite for what gpt2-tiny's run already holds
    pytest.param("gpt2-mini", "bf16", marks=[pytest.mark.cpu_features, NATIVE_BF16, pytest.mark.slow]),
])
def test_estimate_is_within_25_percent_of_a_real_run(recipe, precision):
    config = load_recipe(PretrainRecipe, recipe)
    rows = estimate(recipe_model_config(config), config.train.batch_size, config.data.block_size, 1)
    ddp = next(r for r in rows if r.strategy == "DDP" and r.precision == ("fp32" if precision == "no" else "bf16"))
    measured = _measured_peak(recipe, precision)
    assert ddp.total / MiB == pytest.approx(measured, rel=0.25), (ddp.total / MiB, measured)


def test_sharding_divides_states_not_activations():
    config = load_recipe(PretrainRecipe, "gpt2-tiny")
    one = {(r.strategy, r.precision): r for r in estimate(recipe_model_config(config), 16, 128, 1)}
    eight = {(r.strategy, r.precision): r for r in estimate(recipe_model_config(config), 16, 128, 8)}
    assert eight["DDP", "bf16"].total == one["DDP", "bf16"].total
    assert eight["ZeRO-2", "bf16"].optimizer == pytest.approx(one["ZeRO-2", "bf16"].optimizer / 8)
    assert eight["ZeRO-3", "bf16"].gradients == pytest.approx(one["ZeRO-3", "bf16"].gradients / 8)
    assert eight["FSDP", "fp32"].activations == one["FSDP", "fp32"].activations
    assert one["DDP", "bf16"].activations < one["DDP", "fp32"].activations


def test_cli_prints_every_strategy():
    code, out, err = run_cli(["estimate-memory", "--recipe", "gpt2-tiny", "-n", "4"])
    assert code == 0, err
    for strategy in ("DDP", "FSDP", "ZeRO-2", "ZeRO-3"):
        assert strategy in out


@pytest.mark.parametrize("recipe", ["gpt2-tiny", "bert-tiny-mlm-nsp"])
def test_deep_models_are_extrapolated_exactly_from_two_layers(recipe):
    """Every block has the same parameters and saved tensors: the four-layer estimate from one- and two-layer
    models equals the one measured on the four-layer model."""
    from hftool.memory import measure, measure_any_depth

    config = recipe_model_config(load_recipe(PretrainRecipe, recipe, ["model.config.num_hidden_layers=4"]
                                             if recipe.startswith("bert") else ["model.config.n_layer=4"]))
    assert config.num_hidden_layers == 4
    assert measure_any_depth(config, 2, 32) == measure(config, 2, 32)


def test_absurd_sizes_answer_at_once():
    """A million layers are estimated without building them; sizes PyTorch cannot describe are one line."""
    code, out, err = run_cli(["estimate-memory", "model.config.n_layer=1000000"])
    assert code == 0, err[-2000:]
    assert "ZeRO-3" in out
    code, out, err = run_cli(["estimate-memory", "data.block_size=10000000000", "model.config.n_positions=10000000000"])
    assert code == 2
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("error: the model or micro-batch is too large to estimate")


def test_table_is_not_cut_to_80_columns():
    """Written to a file or pipe (80 columns by default), the headers and numbers stay whole."""
    code, out, err = run_cli(["estimate-memory", "model.config.n_layer=1000000"])
    assert code == 0, err[-2000:]
    assert "…" not in out
    assert "optimizer" in out and "activations" in out
