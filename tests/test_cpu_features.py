"""What hftool decides from the CPU's features, checked on a simulated AVX2-only CPU (HFTOOL_SIMULATE_CPU=avx2).

The simulation is read by the code that decides (hftool/environment.py), so these hold on any machine.
"""

from __future__ import annotations

import pytest
import torch
from helpers import run_cli

from hftool import environment
from hftool.config import load_recipe
from hftool.cost import estimated_seconds, long_cpu_run_warning
from hftool.engine import Engine, TrainConfig
from hftool.errors import HftoolError
from hftool.schemas.pretrain import PretrainRecipe

pytestmark = [pytest.mark.cpu_features,
              pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU-only decisions; a GPU is visible")]


@pytest.fixture
def avx2_cpu(monkeypatch):
    monkeypatch.setenv(environment.SIMULATE_CPU_VAR, "avx2")


@pytest.fixture
def fresh_accelerator():
    """Each Engine here asks for its own precision; Accelerate keeps one state per process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_simulated_avx2_cpu_has_no_avx512_and_no_native_bf16(avx2_cpu):
    flags = environment.cpu_flags()
    assert not {"avx512f", "avx512_bf16", "amx_bf16"} & flags
    assert not environment.cpu_has_native_bf16()
    assert environment.resolve_mixed_precision("auto") == "no"


def test_an_unknown_simulated_cpu_is_refused(monkeypatch):
    monkeypatch.setenv(environment.SIMULATE_CPU_VAR, "pentium")
    with pytest.raises(HftoolError, match="HFTOOL_SIMULATE_CPU=pentium"):
        environment.cpu_flags()


def test_explicit_bf16_is_refused_in_one_line_naming_setting_feature_and_fix(avx2_cpu, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", "-r", "gpt2-tiny", "train.mixed_precision=bf16", "train.max_steps=1",
                            f"train.output_dir={out}", "train.report_to=none"])
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.mixed_precision=bf16"), err
    assert "avx512_bf16" in lines[0] and "train.mixed_precision=auto" in lines[0]
    assert "train.allow_slow_bf16=true" in lines[0]
    assert not out.exists()


def test_evaluate_names_its_own_flag(avx2_cpu, tmp_path):
    code, _, err = run_cli(["evaluate", "squad", "--model", str(tmp_path), "--file", str(tmp_path / "dev.json"),
                            "--mixed-precision", "bf16"])
    assert code != 0 and err.startswith("error: --mixed-precision=bf16: this CPU lacks native bf16"), err
    assert "use --mixed-precision=auto (or no)" in err and len(err.strip().splitlines()) == 1


def test_the_engine_refuses_too_unless_the_user_insists(avx2_cpu, tmp_path, fresh_accelerator):
    with pytest.raises(HftoolError, match="allow_slow_bf16"):
        Engine(TrainConfig(mixed_precision="bf16", report_to="none"), tmp_path)
    engine = Engine(TrainConfig(mixed_precision="bf16", allow_slow_bf16=True, report_to="none"), tmp_path)
    assert engine.accelerator.mixed_precision == "bf16"


def test_auto_picks_float32_on_that_cpu(avx2_cpu, tmp_path, fresh_accelerator):
    assert Engine(TrainConfig(mixed_precision="auto", report_to="none"), tmp_path).accelerator.mixed_precision == "no"


@pytest.mark.skipif(not environment.cpu_has_native_bf16(), reason="this CPU lacks native bf16 (avx512_bf16/amx)")
def test_explicit_bf16_is_accepted_where_the_cpu_has_native_bf16(tmp_path, fresh_accelerator):
    assert Engine(TrainConfig(mixed_precision="bf16", report_to="none"), tmp_path).accelerator.mixed_precision == "bf16"


def test_generate_in_bfloat16_warns_with_the_measured_factor(avx2_cpu, tiny_gpt2):
    code, out, err = run_cli(["generate", "-m", str(tiny_gpt2), "-p", "Hello", "--max-new-tokens", "2",
                              "--dtype", "bfloat16"])
    assert code == 0, err
    factor = environment.EMULATED_BF16_SLOWDOWN["matmul"]
    assert "warning: --dtype bfloat16: this CPU lacks native bf16" in err and f"{factor:.0f}x slower" in err
    assert environment.bf16_inference_warning("float32") is None


def test_a_gpu_sized_recipe_on_a_cpu_warns_with_its_estimate_and_a_small_one_does_not():
    small = load_recipe(PretrainRecipe, "gpt2-small", ["train.mixed_precision=no"])
    warning = long_cpu_run_warning(small, "gpt2-small")
    assert warning and warning.startswith("warning: gpt2-small") and "124M parameters" in warning
    assert "train.max_steps" in warning
    assert long_cpu_run_warning(load_recipe(PretrainRecipe, "gpt2-tiny"), "gpt2-tiny") is None
    # 124M parameters x 1.3B tokens at 1 TFLOP/s: 6 * 124e6 * 1.31e9 / 1e12 s
    assert estimated_seconds(124_000_000, 1_310_720_000, 1e12) == pytest.approx(975_176, rel=1e-3)
