"""The CPU speed-ups must not change what is computed: fast dropout masks and the fused LM-head loss."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli, tiny_pretrain_args
from transformers import BertConfig, BertModel, BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel

from hftool.engine import cpu_dropout
from hftool.engine.cpu_dropout import FastDropout, fast_dropout, use_fast_cpu_dropout
from hftool.tasks import lm_head_loss
from hftool.tasks.causal_lm import CausalLMTask, causal_lm_loss_sum, fused_head_applies
from hftool.tasks.lm_head_loss import linear_cross_entropy_sum


def tiny_gpt2(**fields) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_layer=2, n_embd=32, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, **fields))


# ---- fast dropout -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_drops_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = fast_dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.005
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - round(p * 65536))))


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = fast_dropout(x, 0.3)
    y.sum().backward()
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.equal(x.grad, (y != 0).float() * scale)


def test_fast_dropout_is_seeded_and_off_in_evaluation():
    x = torch.randn(1000)
    torch.manual_seed(5)
    first = fast_dropout(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(first, fast_dropout(x, 0.1))
    assert fast_dropout(x, 0.1, training=False) is x
    layer = FastDropout(0.1).eval()
    assert layer(x) is x


def test_fast_dropout_bfloat16_keeps_dtype():
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    y = fast_dropout(x, 0.1)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
def test_explicit_attention_equals_sdpa(mask_kind):
    """With a mask that keeps everything, the explicit path must compute SDPA's attention exactly."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = types.SimpleNamespace(is_causal=mask_kind == "causal", training=True)
    q, k, v = (torch.randn(2, 4, 10, 8) for _ in range(3))
    mask = None
    if mask_kind != "causal":
        keep = torch.ones(2, 1, 10, 10, dtype=torch.bool)
        keep[0, :, :, 7:] = False  # padding at the end of the first sequence
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo().min)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    got, _ = cpu_dropout.attention(module, q, k, v, mask, dropout=1e-9)  # rounds to dropping nothing
    assert torch.allclose(got, expected, atol=1e-5)


def test_model_switches_attention_for_training_only_and_restores_it(tmp_path):
    model = tiny_gpt2()
    x = torch.randint(0, 97, (2, 16))
    model.eval()
    before = model(input_ids=x).logits
    with use_fast_cpu_dropout(model):
        assert model.config._attn_implementation.startswith(cpu_dropout.ATTENTION_NAME)
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())
        assert torch.allclose(model(input_ids=x).logits, before, atol=1e-6)  # evaluation: no dropout, SDPA
        model.train()
        torch.manual_seed(0)
        model(input_ids=x, labels=x).loss.backward()
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    assert cpu_dropout.ATTENTION_NAME not in (tmp_path / "config.json").read_text()


def _registries() -> tuple[dict, dict]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)


class _FailsAtStep2(CausalLMTask):
    calls = 0

    def loss_sum(self, model, batch):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("training failed")
        return super().loss_sum(model, batch)


@pytest.mark.parametrize("task", [CausalLMTask, _FailsAtStep2], ids=["returns", "raises"])
def test_a_training_run_leaves_the_model_and_the_attention_registry_as_they_were(task, tmp_path):
    """The engine's CPU-dropout speed-up is scoped to the run: after training returns or raises, the caller's
    model holds its own dropout modules (same objects, same train/eval mode as the model) and SDPA, and
    transformers' attention-function and mask registries hold what they held before."""
    import numpy as np

    from hftool.engine import Engine, TrainConfig

    model = tiny_gpt2(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    modules = dict(model.named_modules())
    registries = _registries()
    data = np.random.default_rng(0).integers(0, 97, size=(16, 12)).astype(np.int32)
    config = TrainConfig(output_dir=str(tmp_path), mixed_precision="no", report_to="none", batch_size=4,
                         max_steps=2, eval_every=0, save_every=0, fast_cpu_dropout=True)
    seen_during = []

    class Spy(task):
        def loss_sum(self, model_, batch):
            seen_during.append((model.config._attn_implementation,
                                any(type(m) is cpu_dropout.FastDropout for m in model.modules())))
            return super().loss_sum(model_, batch)

    if task is _FailsAtStep2:
        with pytest.raises(RuntimeError, match="training failed"):
            Engine(config, tmp_path).fit(model, data, Spy())
    else:
        Engine(config, tmp_path).fit(model, data, Spy())
    assert seen_during and seen_during[0][0].startswith(cpu_dropout.ATTENTION_NAME) and seen_during[0][1]
    assert dict(model.named_modules()) == modules  # the same module objects, none swapped in
    assert all(m.training == model.training for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    assert _registries() == registries


def test_attention_dropout_is_applied_in_training():
    model = tiny_gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.5).train()
    x = torch.randint(0, 97, (2, 16))
    with use_fast_cpu_dropout(model):
        outputs = []
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            outputs.append(model(input_ids=x).logits)
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2], atol=1e-3)


def test_bert_padding_masks_work_with_the_fast_attention():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=64, attention_probs_dropout_prob=1e-9, hidden_dropout_prob=0.0))
    ids = torch.randint(1, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0
    model.train()
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with use_fast_cpu_dropout(model):
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)


# ---- fused LM head + cross-entropy --------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_elements", [1 << 24, 97 * 5])  # one chunk; many chunks with a ragged last one
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients(monkeypatch, chunk_elements):
    monkeypatch.setattr(lm_head_loss, "_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(97, 16, requires_grad=True)
    targets = torch.randint(0, 97, (23,))
    targets[[3, 22]] = -100
    expected = F.cross_entropy(hidden @ weight.T, targets, reduction="sum", ignore_index=-100)
    expected.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = linear_cross_entropy_sum(hidden, weight, targets)
    (got * 2.0).backward()  # the incoming gradient is applied
    assert torch.allclose(got, expected, rtol=1e-6)
    assert torch.allclose(hidden.grad, 2 * grads[0], atol=1e-5)
    assert torch.allclose(weight.grad, 2 * grads[1], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy_sum(hidden, weight, targets), expected, rtol=1e-6)


@pytest.mark.cpu_features
def test_linear_cross_entropy_under_bf16_autocast_matches_autocast_linear():
    torch.manual_seed(0)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(200, 32, requires_grad=True)
    targets = torch.randint(0, 200, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
    expected.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy_sum(hidden, weight, targets)
    got.backward()
    assert torch.allclose(got, expected, rtol=1e-5)
    assert torch.allclose(hidden.grad, grads[0], rtol=1e-2, atol=1e-3)
    assert torch.allclose(weight.grad, grads[1], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("architecture", ["gpt2", "bloom"])
def test_fused_task_loss_equals_the_model_logits_loss(architecture):
    torch.manual_seed(0)
    if architecture == "gpt2":
        model = tiny_gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        model = BloomForCausalLM(BloomConfig(vocab_size=97, n_layer=2, hidden_size=32, n_head=4))
    engine = types.SimpleNamespace(shards_parameters=False, static_shapes=False)
    assert fused_head_applies(model, engine)
    assert not fused_head_applies(model, types.SimpleNamespace(shards_parameters=True, static_shapes=False))
    batch = {"input_ids": torch.randint(0, 97, (3, 20))}
    expected = causal_lm_loss_sum(model(input_ids=batch["input_ids"]).logits, batch["input_ids"])
    expected.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    got = CausalLMTask(fused_head=True).loss_sum(model, batch)
    got.backward()
    assert torch.allclose(got, expected, atol=1e-4)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, reference[name], atol=1e-5), name


def test_pretrain_with_speedups_saves_a_plain_model(tmp_path, small_corpus):
    """hftool pretrain on CPU (fast dropout, fused head) writes a standard folder that plain transformers loads."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out)])
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert cpu_dropout.ATTENTION_NAME not in json.dumps(config)
    AutoModelForCausalLM.from_pretrained(out)
