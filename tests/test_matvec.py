"""Float32 matrix-vector products split into row blocks: the plain product's bits, or the plain product itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hftool.generation import matvec
from hftool.generation.matvec import SplitMatVec


@pytest.fixture(autouse=True)
def _fresh_checks(monkeypatch):
    """No verdict carried over between tests; every weight large enough to split; 2 threads, as the products
    below are built for; autograd off, as in generation."""
    monkeypatch.setattr(matvec, "_matches", {})
    monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    with torch.no_grad():
        yield
    torch.set_num_threads(threads)


def _weights(rows: int, columns: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, columns, generator=generator), torch.randn(rows, generator=generator)


def _inputs(size: int, count: int = 3):
    return [torch.randn(1, 1, size, generator=torch.Generator().manual_seed(100 + i)) for i in range(count)]


@pytest.mark.parametrize(("rows", "columns"), [(4096, 1024), (1024, 4096), (50_000, 128), (4099, 1000)])
def test_linear_layout_split_gives_the_plain_products_bits(rows, columns):
    weight, bias = _weights(rows, columns)
    products = SplitMatVec([(weight, bias, True), (weight, None, True)], threads=2)
    assert products.enabled and id(weight) in products._split_weights
    for x in _inputs(columns):
        with_bias, without = products.linear(x, weight, bias), products.linear(x, weight, None)
        assert torch.equal(with_bias, F.linear(x, weight, bias))
        assert torch.equal(without, F.linear(x, weight, None))


@pytest.mark.parametrize(("inputs", "outputs"), [(768, 3072), (3072, 768), (1000, 4099)])
def test_conv1d_layout_split_gives_the_plain_products_bits(inputs, outputs):
    weight, _ = _weights(inputs, outputs)
    bias = torch.randn(outputs)
    products = SplitMatVec([(weight, bias, False)], threads=2)
    assert products.enabled and id(weight) in products._split_weights
    for x in _inputs(inputs):
        split = products.addmm(bias, x[0], weight)
        assert torch.equal(split, torch.addmm(bias, x[0], weight))


def test_the_split_is_one_batched_product_over_aligned_blocks_and_a_plain_rest(monkeypatch):
    calls = []
    for name in ("bmm", "baddbmm", "mm", "addmm"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    weight, bias = _weights(4099, 1000)
    torch.set_num_threads(3)
    products = SplitMatVec([(weight, bias, True)])
    assert products.threads == 3 and products.enabled
    calls.clear()
    x = _inputs(1000)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
    assert calls == ["baddbmm", "addmm"]  # 3 blocks of 1344 rows (21 x 64), then the last 67 rows


def test_a_split_that_changes_any_bit_is_never_used(monkeypatch):
    split_product = SplitMatVec._split

    def off_by_one_ulp(self, x, weight, bias, rows_are_outputs):
        out = split_product(self, x, weight, bias, rows_are_outputs)
        out[0, -1] = torch.nextafter(out[0, -1], torch.tensor(float("inf")))
        return out

    monkeypatch.setattr(SplitMatVec, "_split", off_by_one_ulp)
    weight, bias = _weights(4096, 1024)
    products = SplitMatVec([(weight, bias, True)], threads=2)
    assert id(weight) not in products._split_weights  # the single-threaded plain product is used instead
    x = _inputs(1024)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_when_no_product_can_be_matched_nothing_is_split(monkeypatch):
    monkeypatch.setattr(SplitMatVec, "_matches", lambda *args: False)
    weight, bias = _weights(1024, 256)
    products = SplitMatVec([(weight, bias, True)], threads=2)
    assert not products.enabled
    x = _inputs(256)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_a_thread_count_other_than_the_checked_one_gets_the_plain_product(monkeypatch):
    weight, bias = _weights(1024, 256)
    products = SplitMatVec([(weight, bias, True)], threads=2)
    assert products.enabled

    def unchecked(*args):
        raise AssertionError("split under a thread count it was not checked with")

    monkeypatch.setattr(SplitMatVec, "_split", unchecked)
    torch.set_num_threads(1)
    x = _inputs(256)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_with_autograd_on_the_plain_product_is_used_and_gradients_flow():
    weight, bias = _weights(1024, 256)
    weight.requires_grad_(True)
    x = _inputs(256)[0]
    with torch.enable_grad():
        products = SplitMatVec([(weight, bias, True)], threads=2)  # built (and checked) with autograd on
        assert products.enabled
        products.linear(x, weight, bias).sum().backward()
    assert torch.equal(weight.grad, x.reshape(1, -1).expand(1024, 256))
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_bfloat16_one_thread_small_or_narrow_weights_stay_plain(monkeypatch):
    weight, bias = _weights(1024, 256)
    assert not SplitMatVec([(weight.to(torch.bfloat16), None, True)], threads=2).enabled
    assert not SplitMatVec([(weight, bias, True)], threads=1).enabled
    assert not SplitMatVec([(weight[:100], bias[:100], True)], threads=2).enabled  # fewer rows than 2 blocks
    monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", weight.numel() * 4 + 1)
    assert not SplitMatVec([(weight, bias, True)], threads=2).enabled


@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_fused_step_with_split_products_keeps_the_forwards_logits(name, request):
    """Every weight of the tiny models that has enough rows is split (size threshold 0), on 2 threads, and the
    logits stay the forward's."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from hftool.generation.fused import fused_decode_step

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"tiny_{name}")).eval()
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.inference_mode():
        fused_cache, model_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
        model(input_ids=ids, cache=fused_cache, use_cache=True)
        model(input_ids=ids, cache=model_cache, use_cache=True)
        step = fused_decode_step(model, fused_cache)
        assert matvec._matches and all(matvec._matches.values())
        mask = torch.ones_like(ids)
        for position, token in enumerate([5, 17, 230, 5], start=ids.shape[1]):
            token_ids = torch.tensor([[token]])
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=-1)
            expected = model(input_ids=token_ids, attention_mask=mask, cache=model_cache, use_cache=True,
                             logits_to_keep=1).logits
            assert torch.equal(step(token_ids, position), expected)
