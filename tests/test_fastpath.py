"""The decode fast path: fused steps with the forward's bits (float32 and bfloat16), no process-wide state touched
with several threads decoding at once, the float32 row-block split with the plain product's bits, the switch that
turns it off, and the fall-back to model.generate (warned once) when a transformers attribute it relies on is
missing or its first-step check fails."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from hftool.generation import fastpath
from hftool.generation.decoding import Generator
from hftool.generation.fastpath import matvec, steps
from hftool.generation.fastpath.matvec import MatVec
from hftool.runs.generate import run_generate
from hftool.schemas.generate import DecodingSettings, GenerateRecipe, ModelSettings

PROMPT = "Attention lets every token look at every other token."


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No split verdict or warning carried over between tests; 2 threads, as the products below are built for;
    autograd off, as in generation."""
    monkeypatch.setattr(matvec, "_matches", {})
    monkeypatch.setattr(fastpath, "_warned", set())
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    with torch.no_grad():
        yield
    torch.set_num_threads(threads)


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _reference(model, ids: list[int], new_tokens: int) -> list[int]:
    input_ids = torch.tensor([ids])
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=new_tokens)
    return out[0, len(ids):].tolist()


# ---- fused steps ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True], ids=["plain-products", "split-products"])
@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_fused_step_gives_bit_identical_logits_and_cache_to_the_forward(name, split, request, monkeypatch):
    """With ``split`` every float32 weight of the tiny models is large enough to split (threshold 0)."""
    if split:
        monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", 0)
    model, tokenizer = _load(request.getfixturevalue(f"tiny_{name}"))
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        fused_cache, model_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
        model(input_ids=ids, cache=fused_cache, use_cache=True)
        model(input_ids=ids, cache=model_cache, use_cache=True)
        step = steps.step_builder(model)(model, fused_cache)
        if split:
            assert matvec._matches and all(matvec._matches.values())
        mask = torch.ones_like(ids)
        for position, token in enumerate([5, 17, 230, 5], start=ids.shape[1]):
            token_ids = torch.tensor([[token]])
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=-1)
            expected = model(input_ids=token_ids, attention_mask=mask, cache=model_cache, use_cache=True,
                             logits_to_keep=1).logits
            assert torch.equal(step(token_ids, position), expected)
        # The step's preallocated keys and values (grown from room for one more position) are the cache's.
        for fused_layer, model_layer in zip(fused_cache.layers, model_cache.layers, strict=True):
            assert torch.equal(fused_layer.keys, model_layer.keys)
            assert torch.equal(fused_layer.values, model_layer.values)
    model.train()
    assert steps.step_builder(model) is None  # dropout would be active: not for the fast path


@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_bfloat16_step_gives_the_bits_of_the_models_own_forward(name, request):
    """In bfloat16 too, step after step, the logits are those of the plain forward on PyTorch's default kernels."""
    model = _load(request.getfixturevalue(f"tiny_{name}"))[0].to(torch.bfloat16)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        fused_cache, model_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
        model(input_ids=ids, cache=fused_cache, use_cache=True)
        model(input_ids=ids, cache=model_cache, use_cache=True)
        step = steps.step_builder(model)(model, fused_cache)
        mask = torch.ones_like(ids)
        for position, token in enumerate([5, 17, 230], start=ids.shape[1]):
            token_ids = torch.tensor([[token]])
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=-1)
            expected = model(input_ids=token_ids, attention_mask=mask, cache=model_cache, use_cache=True,
                             logits_to_keep=1).logits
            assert torch.equal(step(token_ids, position), expected)


def _forward_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy search written as a loop over the model's own forward: what the fast path promises to equal."""
    cache, tokens = DynamicCache(config=model.config), []
    input_ids = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = model(input_ids=input_ids, attention_mask=torch.ones((1, len(ids) + len(tokens)),
                                                                          dtype=torch.long),
                           cache=cache, use_cache=True, logits_to_keep=1).logits
            tokens.append(int(logits[0, -1].to(torch.float32).argmax()))
            input_ids = torch.tensor([[tokens[-1]]])
    return tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_tokens_are_greedy_search_over_the_models_own_forward(name, dtype, request):
    """The guarantee as README and decoding.py state it, in both dtypes: greedy search over the forward."""
    model, tokenizer = _load(request.getfixturevalue(f"tiny_{name}"))
    model = model.to(dtype)
    ids = tokenizer(PROMPT)["input_ids"]
    assert fastpath.greedy_tokens(model, ids, 16, set(), "cpu") == _forward_greedy(model, ids, 16)


# ---- no process-wide state: decoding from several threads at once ------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_two_threads_decoding_at_once_change_no_global_state_and_get_their_own_tokens(name, dtype, request):
    """Two threads decode different prompts through one model at the same time while a third watches oneDNN's
    process-wide switch (read from C++ and through a recording setter) and the model's and torch's forward
    hooks: nothing is ever written or added, and each thread's tokens are its single-thread tokens."""
    import threading

    model, tokenizer = _load(request.getfixturevalue(f"tiny_{name}"))
    model = model.to(dtype)
    prompts = [tokenizer(PROMPT)["input_ids"], tokenizer("Every other token looks back.")["input_ids"]]
    alone = [fastpath.greedy_tokens(model, ids, 24, set(), "cpu") for ids in prompts]
    assert None not in alone

    flag = type(torch.backends.mkldnn).__dict__["enabled"]  # the property behind torch.backends.mkldnn.enabled
    writes: list[bool] = []
    seen: set[bool] = set()
    hooks_seen: list[str] = []
    modules_before = {name_: type(module) for name_, module in model.named_modules()}
    results: list[list[int] | None] = [None, None]
    start, done = threading.Barrier(3), threading.Event()

    def hooks() -> list[str]:
        from torch.nn.modules import module as nn_module

        found = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
        return found + (["global"] if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                        else [])

    def watch():
        start.wait()
        while not done.is_set():
            seen.add(torch._C._get_mkldnn_enabled())
            hooks_seen.extend(hooks())
            done.wait(0.001)  # a look each millisecond; spinning would hold the GIL the decoders need

    def decode(i):
        start.wait()
        with torch.no_grad():
            for _ in range(3):
                results[i] = fastpath.greedy_tokens(model, prompts[i], 24, set(), "cpu")
                if results[i] != alone[i]:
                    return

    before = torch._C._get_mkldnn_enabled()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flag, "setter", lambda value, _set=flag.setter: (writes.append(value), _set(value)))
        watcher = threading.Thread(target=watch)
        decoders = [threading.Thread(target=decode, args=(i,)) for i in range(2)]
        for thread in [watcher, *decoders]:
            thread.start()
        for thread in decoders:
            thread.join()
        done.set()
        watcher.join()
    assert results == alone
    assert writes == [] and seen == {before} and torch._C._get_mkldnn_enabled() == before
    assert hooks_seen == []
    assert {name_: type(module) for name_, module in model.named_modules()} == modules_before


def test_only_gpt2_and_bloom_configurations_the_steps_mirror_are_taken(tiny_gpt2, tiny_bloom, tiny_bert):
    gpt2, _ = _load(tiny_gpt2)
    assert fastpath.applies(gpt2)
    gpt2.config._attn_implementation = "eager"
    assert not fastpath.applies(gpt2)
    bloom, _ = _load(tiny_bloom)
    bloom.config.pretraining_tp, bloom.config.slow_but_exact = 2, True
    assert not fastpath.applies(bloom)
    assert fastpath.greedy_tokens(bloom, [5, 6], 4, set(), "cpu") is None  # "not for this model", no warning
    assert not fastpath._warned


# ---- the switch and the fall-back ----------------------------------------------------------------------------

def test_no_fast_decode_uses_model_generate_and_gives_the_same_tokens(tiny_gpt2):
    model, tokenizer = _load(tiny_gpt2)
    ids = tokenizer(PROMPT)["input_ids"]
    on = Generator(model, tokenizer, DecodingSettings(max_new_tokens=12))
    off = Generator(model, tokenizer, DecodingSettings(max_new_tokens=12, fast_decode=False))
    assert on.uses_fast_path and not off.uses_fast_path
    assert on.generate([ids])[0][0].token_ids == off.generate([ids])[0][0].token_ids == _reference(model, ids, 12)
    assert (on.paths, off.paths) == ({"fast decode"}, {"model.generate"})


def test_the_recipe_field_and_the_flag_turn_it_off(tiny_gpt2):
    from hftool.cli.generate import _recipe
    from hftool.config import load_recipe

    recipe = load_recipe(GenerateRecipe, None, [f"model.name={tiny_gpt2}", "decoding.fast_decode=false"])
    assert recipe.decoding.fast_decode is False
    flags = dict.fromkeys(("model", "dtype", "device_map", "offload_folder", "max_memory", "trust_remote_code",
                           "batch_size"))
    assert _recipe(recipe, {**flags, "fast_decode": True}).decoding.fast_decode is True
    assert _recipe(GenerateRecipe(), {**flags, "fast_decode": False}).decoding.fast_decode is False
    out, err = io.StringIO(), io.StringIO()
    run_generate(recipe, PROMPT, None, None, stream=True, out=out, err=err)
    assert "(model.generate)" in err.getvalue() and "warning" not in err.getvalue()


def _run_streamed(tiny_model, new_tokens: int = 10):
    recipe = GenerateRecipe(model=ModelSettings(name=str(tiny_model)),
                            decoding=DecodingSettings(max_new_tokens=new_tokens))
    out, err = io.StringIO(), io.StringIO()
    run_generate(recipe, PROMPT, None, None, stream=True, out=out, err=err)
    return out.getvalue(), err.getvalue()


def _expected_text(tiny_model, new_tokens: int = 10) -> str:
    model, tokenizer = _load(tiny_model)
    new_ids = _reference(model, tokenizer(PROMPT)["input_ids"], new_tokens)
    return tokenizer.decode(new_ids, skip_special_tokens=True) + "\n"


def test_a_missing_transformers_attribute_falls_back_to_generate_with_one_warning(tiny_bloom, monkeypatch,
                                                                                  capsys):
    """BLOOM's step imports ``bloom_gelu_forward`` from transformers. Seen through a module without it (the
    model's own forward keeps its function) the tokens come from model.generate, streamed once, with one
    warning line over two runs."""
    import sys
    import types

    from transformers.models.bloom import modeling_bloom

    expected = _expected_text(tiny_bloom)
    renamed = types.ModuleType(modeling_bloom.__name__)
    renamed.__dict__.update({k: v for k, v in vars(modeling_bloom).items() if k != "bloom_gelu_forward"})
    monkeypatch.setitem(sys.modules, modeling_bloom.__name__, renamed)
    capsys.readouterr()
    for run in range(2):
        out, err = _run_streamed(tiny_bloom)
        assert out == expected
        assert "(model.generate)" in err and "Traceback" not in err
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == (1 if run == 0 else 0)
        if run == 0:
            assert warnings[0].startswith("warning: fast decode off (ImportError: ")
            assert warnings[0].endswith("; using model.generate")


def test_a_missing_config_attribute_falls_back_to_generate(tiny_bloom, monkeypatch):
    """BLOOM's modules copy ``pretraining_tp`` at construction; the fast path reads it off the config."""
    model, tokenizer = _load(tiny_bloom)
    monkeypatch.delattr(model.config, "pretraining_tp", raising=False)
    monkeypatch.delattr(type(model.config), "pretraining_tp", raising=False)
    with pytest.raises(AttributeError):
        model.config.pretraining_tp  # noqa: B018
    ids = tokenizer(PROMPT)["input_ids"]
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=12))
    assert not generator.uses_fast_path
    assert fastpath.greedy_tokens(model, ids, 12, set(), "cpu") is None
    assert len(fastpath._warned) == 1 and "transformers changed" in next(iter(fastpath._warned))
    assert generator.generate([ids])[0][0].token_ids == _reference(model, ids, 12)


@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_a_first_step_that_differs_from_the_forward_falls_back_before_streaming(name, request, monkeypatch,
                                                                                capsys):
    """A step off by one ulp in one logit (as a transformers change in what the forward computes would make
    it) fails the first-step check: model.generate's text, streamed once, and one warning."""
    tiny_model = request.getfixturevalue(f"tiny_{name}")
    expected = _expected_text(tiny_model)
    original = steps.step_builder

    def off_by_one_ulp(model):
        build = original(model)

        def build_changed(*args):
            step = build(*args)

            def changed(token, position):
                logits = step(token, position).clone()
                logits[0, -1, 0] = torch.nextafter(logits[0, -1, 0], torch.tensor(float("inf")))
                return logits

            return changed

        return build_changed

    monkeypatch.setattr(fastpath, "step_builder", off_by_one_ulp)
    capsys.readouterr()
    out, err = _run_streamed(tiny_model)
    assert out == expected
    assert "warning: fast decode off (StepMismatch: the first fused step's logits differ" in capsys.readouterr().err
    assert "(model.generate)" in err


# ---- the float32 row-block split -----------------------------------------------------------------------------

def _weights(rows: int, columns: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, columns, generator=generator), torch.randn(rows, generator=generator)


def _inputs(size: int, count: int = 3):
    return [torch.randn(1, 1, size, generator=torch.Generator().manual_seed(100 + i)) for i in range(count)]


@pytest.mark.parametrize(("rows", "columns"), [(4096, 1024), (1024, 4096), (4099, 1000)])
def test_split_gives_the_plain_products_bits(rows, columns):
    weight, bias = _weights(rows, columns)
    products = MatVec([(weight, bias, True), (weight, None, True)], threads=2)
    if products.split != {id(weight)}:
        pytest.skip("on this CPU's BLAS the row-block split does not give this product's bits, so it is not used")
    for x in _inputs(columns):
        assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
        assert torch.equal(products.linear(x, weight, None), F.linear(x, weight, None))


@pytest.mark.parametrize(("inputs", "outputs"), [(768, 3072), (3072, 768), (1000, 4099)])
def test_conv1d_layout_split_gives_the_plain_products_bits(inputs, outputs):
    weight, _ = _weights(inputs, outputs)
    bias = torch.randn(outputs)
    products = MatVec([(weight, bias, False)], threads=2)
    if products.split != {id(weight)}:
        pytest.skip("on this CPU's BLAS the row-block split does not give this product's bits, so it is not used")
    for x in _inputs(inputs):
        assert torch.equal(products.addmm(bias, x[0], weight), torch.addmm(bias, x[0], weight))


def test_the_split_is_one_batched_product_over_aligned_blocks_and_a_plain_rest(monkeypatch):
    calls = []
    for name in ("bmm", "baddbmm", "mm", "addmm"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    weight, bias = _weights(4099, 1000)
    torch.set_num_threads(3)
    products = MatVec([(weight, bias, True)])
    assert products.threads == 3
    if not products.enabled or products.split != {id(weight)}:
        pytest.skip("on this CPU's BLAS the row-block split does not give this product's bits, so it is not used")
    calls.clear()
    x = _inputs(1000)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
    assert calls == ["baddbmm", "addmm"]  # 3 blocks of 1344 rows (21 x 64), then the last 67 rows


def test_a_split_that_changes_any_bit_is_never_used(monkeypatch):
    def off_by_one_ulp(self, *args):
        out = split(self, *args)
        out[0, -1] = torch.nextafter(out[0, -1], torch.tensor(float("inf")))
        return out

    split = MatVec._split
    monkeypatch.setattr(MatVec, "_split", off_by_one_ulp)
    weight, bias = _weights(4096, 1024)
    products = MatVec([(weight, bias, True)], threads=2)
    assert not products.enabled  # the plain product is used instead
    x = _inputs(1024)[0]
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_a_thread_count_input_type_or_autograd_other_than_the_checked_ones_gets_the_plain_product(monkeypatch):
    weight, bias = _weights(1024, 256)
    products = MatVec([(weight, bias, True)], threads=2)
    assert products.enabled

    def unchecked(*args):
        raise AssertionError("a split under a thread count, input type or autograd state it was not checked with")

    monkeypatch.setattr(MatVec, "_split", unchecked)
    x = _inputs(256)[0]
    with pytest.raises(RuntimeError):  # the plain product's own complaint, not a silently wrong answer
        products.linear(x.double(), weight, bias)
    with torch.enable_grad():
        assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))
    torch.set_num_threads(1)
    assert torch.equal(products.linear(x, weight, bias), F.linear(x, weight, bias))


def test_bfloat16_small_or_narrow_weights_or_one_thread_stay_plain(monkeypatch):
    weight, bias = _weights(1024, 256)
    assert not MatVec([(weight.to(torch.bfloat16), None, True)], threads=2).enabled  # float32 only
    assert not MatVec([(weight, bias, True)], threads=1).enabled  # one thread: nothing to split over
    assert not MatVec([(weight[:100], bias[:100], True)], threads=2).enabled  # fewer rows than 2 blocks
    monkeypatch.setattr(matvec, "MIN_SPLIT_BYTES", weight.numel() * 4 + 1)
    assert not MatVec([(weight, bias, True)], threads=2).enabled
