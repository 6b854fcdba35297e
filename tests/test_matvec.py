"""Row-split float32 matrix-vector products: the plain product's bits, or no split at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hftool.generation import matvec
from hftool.generation.matvec import SplitMatVec


@pytest.fixture(autouse=True)
def _fresh_verification(monkeypatch):
    monkeypatch.setattr(matvec, "_verified", {})


def _weights(rows: int, columns: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, columns, generator=generator), torch.randn(rows, generator=generator)


@pytest.mark.parametrize(("rows", "columns"), [(4096, 1024), (1024, 4096), (50_000, 128), (4099, 1000)])
def test_linear_layout_gives_the_plain_products_bits(rows, columns, monkeypatch):
    monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", 0)
    weight, bias = _weights(rows, columns)
    split = SplitMatVec(threads=2)
    for seed in range(3):
        x = torch.randn(1, 1, columns, generator=torch.Generator().manual_seed(100 + seed))
        assert torch.equal(split.linear(x, weight, bias), F.linear(x, weight, bias))
        assert torch.equal(split.linear(x, weight, None), F.linear(x, weight, None))


@pytest.mark.parametrize(("inputs", "outputs"), [(768, 3072), (3072, 768), (1000, 4099)])
def test_conv1d_layout_gives_the_plain_products_bits(inputs, outputs, monkeypatch):
    monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", 0)
    weight, _ = _weights(inputs, outputs)
    bias = torch.randn(outputs)
    split = SplitMatVec(threads=2)
    for seed in range(3):
        x = torch.randn(1, inputs, generator=torch.Generator().manual_seed(100 + seed))
        assert torch.equal(split.addmm(bias, x, weight), torch.addmm(bias, x, weight))


def test_the_split_runs_where_verified_and_blocks_cover_every_row():
    """On this machine's BLAS the split of a BLOOM-sized layer is bit-identical, so it is used (not skipped)."""
    weight, bias = _weights(4096, 1024)
    split = SplitMatVec(threads=2)
    x = torch.randn(1, 1024)
    assert torch.equal(split.linear(x, weight, bias), F.linear(x, weight, bias))
    assert list(matvec._verified.values()) == [True]
    blocks = matvec._blocks(4099, 3)
    assert blocks[0][0] == 0 and blocks[-1][1] == 4099
    assert all(end == start for (_, end), (start, _) in zip(blocks, blocks[1:], strict=False))
    assert all(start % matvec.ROW_ALIGN == 0 for start, _ in blocks)


def test_a_split_that_changes_any_bit_is_never_used(monkeypatch):
    split_product = SplitMatVec._split

    def off_by_one_ulp(self, x, weight, bias, rows_are_outputs):
        out = split_product(self, x, weight, bias, rows_are_outputs)
        out[0, -1] = torch.nextafter(out[0, -1], torch.tensor(float("inf")))
        return out

    monkeypatch.setattr(SplitMatVec, "_split", off_by_one_ulp)
    weight, bias = _weights(4096, 1024)
    x = torch.randn(1, 1024)
    assert torch.equal(SplitMatVec(threads=2).linear(x, weight, bias), F.linear(x, weight, bias))
    assert list(matvec._verified.values()) == [False]


def test_small_non_float32_or_single_thread_products_stay_plain(monkeypatch):
    def must_not_split(*args):
        raise AssertionError("split used")

    monkeypatch.setattr(SplitMatVec, "_split", must_not_split)
    small, bias = _weights(256, 256)
    big, big_bias = _weights(4096, 1024)
    assert torch.equal(SplitMatVec(threads=2).linear(torch.ones(1, 256), small, bias),
                       F.linear(torch.ones(1, 256), small, bias))
    assert SplitMatVec(threads=1).linear(torch.ones(1, 1024), big, big_bias).shape == (1, 4096)
    half = big.to(torch.bfloat16)
    assert SplitMatVec(threads=2).linear(torch.ones(1, 1024, dtype=torch.bfloat16), half, None).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_fused_step_with_split_products_keeps_the_forwards_logits(name, request, monkeypatch):
    """Every weight of the tiny models is offered to the split (threshold 0), on 2 threads."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from hftool.generation.fused import fused_decode_step

    monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"tiny_{name}")).eval()
        ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
        with torch.inference_mode():
            fused_cache, model_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
            model(input_ids=ids, cache=fused_cache, use_cache=True)
            model(input_ids=ids, cache=model_cache, use_cache=True)
            step = fused_decode_step(model, fused_cache)
            mask = torch.ones_like(ids)
            for position, token in enumerate([5, 17, 230, 5], start=ids.shape[1]):
                token_ids = torch.tensor([[token]])
                mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=-1)
                expected = model(input_ids=token_ids, attention_mask=mask, cache=model_cache, use_cache=True,
                                 logits_to_keep=1).logits
                assert torch.equal(step(token_ids, position), expected)
        assert matvec._verified, "no weight was offered to the split"
    finally:
        torch.set_num_threads(threads)
