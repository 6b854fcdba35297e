"""One-row products by hftool's kernels (float32, bfloat16) or split into row blocks (float32): the plain
product's bits, or the plain product itself."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from hftool.generation import matvec
from hftool.generation.matvec import MatVec, compiled_kernel

pytestmark = pytest.mark.cpu_features  # the kernels and the ways that match depend on the CPU and its BLAS


@pytest.fixture(autouse=True)
def _fresh_checks(monkeypatch):
    """No verdict carried over between tests; every weight large enough to split; 2 threads, as the products
    below are built for; autograd off, as in generation."""
    monkeypatch.setattr(matvec, "_matches", {})
    monkeypatch.setattr(matvec, "MIN_FAST_BYTES", 0)
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


needs_kernel = pytest.mark.skipif(compiled_kernel() is None,
                                  reason="hftool's kernel needs Linux on x86-64, a C compiler and PyTorch's libgomp")


@pytest.fixture
def no_kernel(monkeypatch):
    """As on a machine where the kernel cannot be built: the batched split is the fast way left."""
    monkeypatch.setattr(matvec, "compiled_kernel", lambda: None)


def _check_linear(products, weight, bias, columns):
    for x in _inputs(columns):
        assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
        assert torch.equal(products.linear(x, weight, None), F.linear(x, weight, None))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("rows", "columns"), [(4096, 1024), (1024, 4096), (50_000, 128), (4099, 1000), (13, 8)])
def test_kernel_gives_the_plain_products_bits(rows, columns, threads):
    """Row counts that are and are not a multiple of the eight rows in flight, on any thread count."""
    torch.set_num_threads(threads)
    weight, bias = _weights(rows, columns)
    products = MatVec([(weight, bias, True), (weight, None, True)])
    assert products.ways == {id(weight): "kernel"}
    _check_linear(products, weight, bias, columns)


def _at_offset(tensor: torch.Tensor, floats: int) -> torch.Tensor:
    """A copy of ``tensor`` starting ``floats`` floats past a 64-byte boundary, as weights read from a
    safetensors file can."""
    buffer = torch.empty(tensor.numel() + 32)
    start = (16 - buffer.data_ptr() % 64 // 4) % 16 + floats
    return buffer[start:start + tensor.numel()].view(tensor.shape).copy_(tensor)


@needs_kernel
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 6])
@pytest.mark.parametrize("columns", [1024, 1001, 8])
def test_kernel_follows_the_alignment_of_the_rows(offset, columns):
    """MKL's order depends on where a row starts relative to a 16-byte boundary, and on the products left over
    after the 4-lane part; the kernel follows both."""
    weight, bias = _weights(2048, columns)
    weight = _at_offset(weight, offset)
    if columns % 4:
        weight = _at_offset(torch.zeros(2048, 1004), offset)[:, :columns].copy_(weight)  # rows 1,004 floats apart
    products = MatVec([(weight, bias, True)], threads=2)
    assert products.ways == {id(weight): "kernel"}
    _check_linear(products, weight, bias, columns)


@needs_kernel
def test_rows_starting_at_different_alignments_go_to_the_split():
    weight, bias = _weights(2048, 1022)  # rows 1,022 floats apart: every other row starts 2 floats off
    assert MatVec([(weight, bias, True)], threads=2).ways == {id(weight): "split"}


@needs_kernel
def test_kernel_is_compiled_once_into_the_cache_and_a_failed_build_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compiled_kernel.cache_clear()
    try:
        assert compiled_kernel() is not None
        built = list((tmp_path / "hftool" / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"  # no partial file left beside it
        compiled_kernel.cache_clear()
        assert compiled_kernel() is not None and list((tmp_path / "hftool" / "kernels").iterdir()) == built

        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
        monkeypatch.setenv("CC", "false")  # a compiler that always fails
        compiled_kernel.cache_clear()
        assert compiled_kernel() is None
        assert list((tmp_path / "other" / "hftool" / "kernels").iterdir()) == []
        weight, bias = _weights(4096, 1024)
        products = MatVec([(weight, bias, True)], threads=2)
        assert products.ways == {id(weight): "split"}
        _check_linear(products, weight, bias, 1024)
    finally:
        compiled_kernel.cache_clear()


@contextmanager
def _onednn(enabled: bool):
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@pytest.fixture
def onednn_off():
    """As in a bfloat16 decode step (``single_row_matmuls``): the plain product is ATen's own kernel."""
    with _onednn(False):
        yield


needs_bf16_kernel = pytest.mark.skipif(compiled_kernel() is None or not compiled_kernel().hftool_has_avx2_fma(),
                                       reason="hftool's bfloat16 kernel needs a CPU with AVX2 and FMA")


@needs_bf16_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("rows", "columns"), [(4096, 1024), (1024, 4096), (3001, 768), (20_000, 64)])
def test_bfloat16_kernel_gives_atens_bits(rows, columns, threads, onednn_off):
    torch.set_num_threads(threads)
    weight, bias = (t.to(torch.bfloat16) for t in _weights(rows, columns))
    products = MatVec([(weight, bias, True), (weight, None, True)])
    assert products.ways == {id(weight): "kernel"}
    for x in _inputs(columns):
        x = x.to(torch.bfloat16)
        assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
        assert torch.equal(products.linear(x, weight, None), F.linear(x, weight, None))


@needs_bf16_kernel
def test_bfloat16_kernel_is_checked_on_probes_that_show_the_order(monkeypatch, onednn_off):
    """A product summed in float64 and rounded once matches ATen's on random rows almost always (the float32
    sum is rounded to bfloat16's 8 bits), but not on the probe rows, where float64 loses none of the ones."""
    weight, bias = (t.to(torch.bfloat16) for t in _weights(64, 1024))
    x = torch.randn(1, 1024, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)

    def float64_sum(x, weight, bias):
        out = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
        return out.to(torch.bfloat16)

    assert torch.equal(float64_sum(x, weight, bias), F.linear(x, weight, bias))  # the random check alone passes
    monkeypatch.setattr(MatVec, "_kernel", staticmethod(float64_sum))
    assert not MatVec([(weight, bias, True)], threads=2).enabled


@needs_bf16_kernel
def test_bfloat16_kernel_only_under_the_onednn_setting_it_was_checked_with(monkeypatch):
    weight, bias = (t.to(torch.bfloat16) for t in _weights(1024, 256))
    with _onednn(False):
        products = MatVec([(weight, bias, True)], threads=2)
    assert products.ways == {id(weight): "kernel"}

    def unchecked(*args):
        raise AssertionError("the kernel under a oneDNN setting it was not checked with")

    monkeypatch.setattr(MatVec, "_product", unchecked)
    x = _inputs(256)[0].to(torch.bfloat16)
    with _onednn(True):
        assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


@pytest.mark.parametrize(("rows", "columns"), [(4096, 1024), (1024, 4096), (50_000, 128), (4099, 1000)])
def test_linear_layout_split_gives_the_plain_products_bits(rows, columns, no_kernel):
    weight, bias = _weights(rows, columns)
    products = MatVec([(weight, bias, True), (weight, None, True)], threads=2)
    assert products.ways == {id(weight): "split"}
    _check_linear(products, weight, bias, columns)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize(("inputs", "outputs"), [(768, 3072), (3072, 768), (1001, 4099), (256, 40)])
def test_conv1d_layout_kernel_gives_the_plain_products_bits(inputs, outputs, offset, threads):
    """Widths that do and do not divide among the threads in 16s, input counts that are not a multiple of the
    eight added per pass, rows at any alignment."""
    torch.set_num_threads(threads)
    weight, _ = _weights(inputs, outputs)
    weight = _at_offset(weight, offset)
    bias = torch.randn(outputs)
    products = MatVec([(weight, bias, False)])
    assert products.ways == {id(weight): "kernel"}
    for x in _inputs(inputs):
        assert torch.equal(products.addmm(bias, x[0], weight), torch.addmm(bias, x[0], weight))


@pytest.mark.parametrize(("inputs", "outputs"), [(768, 3072), (3072, 768), (1000, 4099)])
def test_conv1d_layout_split_gives_the_plain_products_bits(inputs, outputs, no_kernel):
    weight, _ = _weights(inputs, outputs)
    bias = torch.randn(outputs)
    products = MatVec([(weight, bias, False)], threads=2)
    assert products.ways == {id(weight): "split"}
    for x in _inputs(inputs):
        split = products.addmm(bias, x[0], weight)
        assert torch.equal(split, torch.addmm(bias, x[0], weight))


def test_the_split_is_one_batched_product_over_aligned_blocks_and_a_plain_rest(monkeypatch, no_kernel):
    calls = []
    for name in ("bmm", "baddbmm", "mm", "addmm"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    weight, bias = _weights(4099, 1000)
    torch.set_num_threads(3)
    products = MatVec([(weight, bias, True)])
    assert products.threads == 3 and products.ways == {id(weight): "split"}
    calls.clear()
    x = _inputs(1000)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
    assert calls == ["baddbmm", "addmm"]  # 3 blocks of 1344 rows (21 x 64), then the last 67 rows


def _off_by_one_ulp(product):
    def changed(*args):
        out = product(*args)
        out[0, -1] = torch.nextafter(out[0, -1], torch.tensor(float("inf")))
        return out

    return changed


def test_a_way_that_changes_any_bit_is_never_used(monkeypatch):
    monkeypatch.setattr(MatVec, "_kernel", staticmethod(_off_by_one_ulp(MatVec._kernel)))
    weight, bias = _weights(4096, 1024)
    assert MatVec([(weight, bias, True)], threads=2).ways == {id(weight): "split"}  # the next way that matches
    monkeypatch.setattr(MatVec, "_split", _off_by_one_ulp(MatVec._split))
    matvec._matches.clear()  # forget the verdicts of the unchanged ways
    products = MatVec([(weight, bias, True)], threads=2)
    assert not products.enabled  # the plain product is used instead
    x = _inputs(1024)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_when_no_product_can_be_matched_nothing_changes(monkeypatch):
    monkeypatch.setattr(MatVec, "_matches", lambda *args: False)
    weight, bias = _weights(1024, 256)
    products = MatVec([(weight, bias, True)], threads=2)
    assert not products.enabled
    x = _inputs(256)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_a_thread_count_or_input_type_other_than_the_checked_ones_gets_the_plain_product(monkeypatch):
    weight, bias = _weights(1024, 256)
    products = MatVec([(weight, bias, True)], threads=2)
    assert products.enabled

    def unchecked(*args):
        raise AssertionError("a faster way under a thread count or input type it was not checked with")

    monkeypatch.setattr(MatVec, "_product", unchecked)
    x = _inputs(256)[0]
    assert torch.equal(products.linear(x.double(), weight.double(), bias.double()),
                       F.linear(x.double(), weight.double(), bias.double()))
    with pytest.raises(RuntimeError):  # the plain product's own complaint, not a silently wrong answer
        products.linear(x.double(), weight, bias)
    torch.set_num_threads(1)
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_with_autograd_on_the_plain_product_is_used_and_gradients_flow():
    weight, bias = _weights(1024, 256)
    weight.requires_grad_(True)
    x = _inputs(256)[0]
    with torch.enable_grad():
        products = MatVec([(weight, bias, True)], threads=2)  # built (and checked) with autograd on
        assert products.enabled
        products.linear(x, weight, bias).sum().backward()
    assert torch.equal(weight.grad, x.reshape(1, -1).expand(1024, 256))
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_without_the_kernels_bfloat16_small_or_narrow_weights_stay_plain(monkeypatch, no_kernel):
    weight, bias = _weights(1024, 256)
    assert not MatVec([(weight.to(torch.bfloat16), None, True)], threads=2).enabled  # no bfloat16 split
    assert not MatVec([(weight, bias, True)], threads=1).enabled  # one thread: nothing to split over
    assert not MatVec([(weight[:100], bias[:100], True)], threads=2).enabled  # fewer rows than 2 blocks
    monkeypatch.setattr(matvec, "MIN_FAST_BYTES", weight.numel() * 4 + 1)
    assert not MatVec([(weight, bias, True)], threads=2).enabled


@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_fused_step_with_faster_products_keeps_the_forwards_logits(name, request):
    """Every weight of the tiny models goes the fastest way that matches (size threshold 0), on 2 threads, and
    the logits stay the forward's."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from hftool.generation.fused import fused_decode_step

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"tiny_{name}")).eval()
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.inference_mode():
        fused_cache, model_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
        model(input_ids=ids, cache=fused_cache, use_cache=True)
        model(input_ids=ids, cache=model_cache, use_cache=True)
        step = fused_decode_step(model, fused_cache)
        assert matvec._matches  # each way was checked; where this CPU's BLAS sums in another order, none matches
        if all(matvec._matches.values()) and compiled_kernel() is not None:  # nn.Linear, any alignment
            assert any(way == "kernel" for way, *_ in matvec._matches)
        mask = torch.ones_like(ids)
        for position, token in enumerate([5, 17, 230, 5], start=ids.shape[1]):
            token_ids = torch.tensor([[token]])
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=-1)
            expected = model(input_ids=token_ids, attention_mask=mask, cache=model_cache, use_cache=True,
                             logits_to_keep=1).logits
            assert torch.equal(step(token_ids, position), expected)
