"""The continuous-batching scheduler of hftool serve, on the tiny GPT-2 and BLOOM folders (no HTTP).

Jobs join the running batch mid-flight and leave it when they end or their client goes away; every row's greedy
tokens are those of ``model.generate`` on its prompt alone; the cache budget holds jobs back; a seed reproduces
a sampled job whoever decodes beside it. Not marked integration: each test takes a second or two.
"""

from __future__ import annotations

import time

import pytest
import torch

from hftool.generation.loading import load_for_generation
from hftool.schemas.generate import DecodingSettings, ModelSettings
from hftool.serve.metrics import Metrics
from hftool.serve.scheduler import Job, QueueFull, Scheduler, TooLarge

PROMPTS = ["The quick brown fox jumps over the lazy dog", "hi", "Attention lets every token see the others"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _nan_filled_slot_buffers(monkeypatch):
    """Fresh slot buffers full of NaN instead of whatever memory held: a column the mask hides still takes part in
    the attention's products (weight 0, and 0 * NaN is NaN), so a column read before any step wrote it shows."""
    from hftool.serve import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "_empty",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))


@pytest.fixture(scope="module")
def sharp_llama(tmp_path_factory, byte_bpe_tokenizer):
    """A 2-layer, 64-wide Llama (rotary positions, two query heads per key head) with weights drawn wide, as
    ``sharp_gpt2``: a decoder hftool does not pretrain, which the scheduler serves all the same."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(byte_bpe_tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sharp-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["gpt2", "bloom"])
def loaded(request, sharp_gpt2, sharp_bloom):
    folder = sharp_gpt2 if request.param == "gpt2" else sharp_bloom
    return load_for_generation(ModelSettings(name=str(folder)))


@pytest.fixture(scope="module", params=["gpt2", "bloom", "llama"])
def decoder(request, sharp_gpt2, sharp_bloom, sharp_llama):
    """``loaded``, and a Llama: the decoders whose prompts join a decoding step's forward (GPT-2, Llama) or not."""
    folder = {"gpt2": sharp_gpt2, "bloom": sharp_bloom, "llama": sharp_llama}[request.param]
    return load_for_generation(ModelSettings(name=str(folder)))


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return load_for_generation(ModelSettings(name=str(tiny_gpt2)))


class Log:
    """Every job's events in the order the decoding thread emitted them, and the rows of every forward."""

    def __init__(self, model):
        self.events: list[tuple[str, tuple]] = []
        self.rows: list[int] = []
        self.joined: list[int] = []  # prompts prefilled inside each forward's decoding step (serve/flat.py)
        self.model = model
        forward = model.forward

        def counting_forward(*args, **kwargs):
            keep = kwargs.get("logits_to_keep")  # a flat step's rows are its kept positions (serve/flat.py)
            self.rows.append(len(keep) if isinstance(keep, torch.Tensor) else kwargs["input_ids"].shape[0])
            self.joined.append(len(kwargs["flat_step"].spans) if "flat_step" in kwargs else 0)
            return forward(*args, **kwargs)

        model.forward = counting_forward

    def sink(self, name: str):
        return lambda event: self.events.append((name, event))

    def of(self, name: str) -> list[tuple]:
        return [event for who, event in self.events if who == name]

    def index(self, name: str, kind: str) -> int:
        return next(i for i, (who, event) in enumerate(self.events) if who == name and event[0] == kind)

    def restore(self):
        del self.model.forward


@pytest.fixture
def log(loaded):
    log = Log(loaded[0])
    yield log
    log.restore()


def scheduler(loaded, **kwargs) -> Scheduler:
    model, tokenizer = loaded
    kwargs = {"max_batch_size": 8, "max_queue": 8, "threads": 1, **kwargs}
    return Scheduler(model, tokenizer, 128, metrics=kwargs.pop("metrics", None), **kwargs)


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the scheduler did not get there in time"
        time.sleep(0.01)


def ended(log: Log, *names: str) -> bool:
    return all(log.of(name) and log.of(name)[-1][0] in ("end", "error") for name in names)


def generate_alone(loaded, ids: list[int], settings: DecodingSettings) -> str:
    model, tokenizer = loaded
    extra = {}
    if settings.repetition_penalty != 1.0:
        extra["repetition_penalty"] = settings.repetition_penalty
    if settings.no_repeat_ngram_size:
        extra["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
    out = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=settings.max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, **extra)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def finished_text(log: Log, name: str) -> str:
    return next(event for event in log.of(name) if event[0] == "finish")[5]


def short_joins_long_mid_flight(loaded, log: Log, reference) -> None:
    """A 24-token job runs; a 6-token one joins at its third token, from the decoding thread. Each job's text is
    ``reference``'s model.generate on its prompt alone."""
    _, tokenizer = loaded
    prompts = {"long": tokenizer(PROMPTS[0])["input_ids"], "short": tokenizer(PROMPTS[2])["input_ids"]}
    settings = {"long": DecodingSettings(max_new_tokens=24), "short": DecodingSettings(max_new_tokens=6)}
    runner = scheduler(loaded)
    sink = log.sink("long")

    def long_sink(event):
        sink(event)
        if event[0] == "text" and len(log.of("long")) == 3:  # from the decoding thread, mid-flight
            runner.submit(Job([prompts["short"]], settings["short"], log.sink("short")))

    runner.submit(Job([prompts["long"]], settings["long"], long_sink))
    runner.start()
    wait_for(lambda: ended(log, "long", "short"))
    runner.close()
    log.restore()
    for name in settings:
        assert finished_text(log, name) == generate_alone(reference, prompts[name], settings[name]), name


def test_rows_joining_and_leaving_mid_flight_keep_the_tokens_of_generate_alone(loaded, log):
    """A long job runs; a short one joins at its third token (a long prompt prefilled in chunks of 4 tokens,
    and a job with a repetition penalty and one with n-gram blocking) and leaves before it; each row's text is
    model.generate's on its prompt alone, greedy, with its own settings."""
    _, tokenizer = loaded
    encoded = [tokenizer(p)["input_ids"] for p in PROMPTS]
    runner = scheduler(loaded, prefill_chunk=4)
    settings = {"long": DecodingSettings(max_new_tokens=40),
                "short": DecodingSettings(max_new_tokens=4),
                "penalised": DecodingSettings(max_new_tokens=9, repetition_penalty=1.5),
                "ngram": DecodingSettings(max_new_tokens=10, no_repeat_ngram_size=2)}
    prompts = {"long": encoded[0], "short": encoded[2], "penalised": encoded[1], "ngram": encoded[2]}
    sink = log.sink("long")
    texts = [0]

    def long_sink(event):
        sink(event)
        if event[0] == "text":
            texts[0] += 1
            if texts[0] == 3:  # from the decoding thread, mid-flight
                for name in ("short", "penalised", "ngram"):
                    runner.submit(Job([prompts[name]], settings[name], log.sink(name)))

    runner.submit(Job([prompts["long"]], settings["long"], long_sink))
    runner.start()
    wait_for(lambda: ended(log, "long", "short", "penalised", "ngram"))
    runner.close()
    for name in settings:
        assert finished_text(log, name) == generate_alone(loaded, prompts[name], settings[name]), name
        assert log.of(name)[-1] == ("end",)
    assert log.index("short", "text") < log.index("long", "finish")  # it joined while the long one ran
    assert log.index("short", "finish") < log.index("long", "finish")  # and left before it
    assert max(log.rows) >= 3 and log.rows[-1] == 1  # decoded together; the long one alone at the end
    assert runner.running == 0 and runner.cache_reserved == 0
    # GPT-2's joining prompts were prefilled inside the running row's decoding step; BLOOM (ALiBi from the mask)
    # keeps a prefill forward of its own
    assert (sum(log.joined) >= 1) == (loaded[0].config.model_type == "gpt2")


def test_slots_reallocated_as_rows_join_leave_and_outgrow_their_columns_keep_the_tokens_alone(loaded, log,
                                                                                                monkeypatch):
    """With no spare columns or slots the cache is reallocated at nearly every event: one-token prompts start
    the batch, a long prompt joins later (it needs columns before the window), rows leave from the middle (the
    last row moves into their slot) and the oldest leaves first (the window shrinks); every row's text is still
    model.generate's alone, and the slots end empty, their buffers freed."""
    from hftool.serve import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "SPARE_COLUMNS", 1)
    _, tokenizer = loaded
    long_ids = tokenizer(" ".join(PROMPTS))["input_ids"]
    runner = scheduler(loaded, prefill_chunk=64)
    limits = {"first": 3, "second": 9, "third": 14, "fourth": 6}
    prompts = {"first": long_ids[:1], "second": long_ids[:2], "third": long_ids[:1], "fourth": long_ids}
    sinks = {name: log.sink(name) for name in limits}
    steps = [0]

    def second_sink(event):
        sinks["second"](event)
        steps[0] += 1
        if steps[0] == 2:  # from the decoding thread: joins a running batch whose window is narrower than it
            runner.submit(Job([prompts["fourth"]], DecodingSettings(max_new_tokens=limits["fourth"]),
                              sinks["fourth"]))

    for name in ("first", "second", "third"):
        sink = second_sink if name == "second" else sinks[name]
        runner.submit(Job([prompts[name]], DecodingSettings(max_new_tokens=limits[name]), sink))
    runner.start()
    wait_for(lambda: ended(log, *limits))
    runner.close()
    for name, limit in limits.items():
        assert finished_text(log, name) == generate_alone(loaded, prompts[name], DecodingSettings(max_new_tokens=limit))
    assert max(log.rows) >= 3 and not runner.batches


def test_prompts_joining_a_decoding_step_take_new_slots_and_columns_and_keep_the_tokens_alone(decoder,
                                                                                            monkeypatch):
    """Two prompts with two continuations each join a one-token row's decoding step, one of them wider than the
    window and the buffers without a spare slot or column, so that step reallocates them; for GPT-2 and Llama
    they are prefilled inside the step (serve/flat.py). Every row's text is model.generate's alone."""
    from hftool.serve import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "SPARE_COLUMNS", 1)
    loaded, log = decoder, Log(decoder[0])
    _, tokenizer = loaded
    long_ids = tokenizer(" ".join(PROMPTS))["input_ids"]
    runner = scheduler(loaded, prefill_chunk=64)
    joining = Job([long_ids, long_ids[:3]], DecodingSettings(max_new_tokens=7, num_return_sequences=2),
                  log.sink("joining"))
    steps = [0]
    first_sink = log.sink("first")

    def sink(event):
        first_sink(event)
        steps[0] += 1
        if steps[0] == 2:  # from the decoding thread: the next step is the first row's third
            runner.submit(joining)

    runner.submit(Job([long_ids[:1]], DecodingSettings(max_new_tokens=12), sink))
    runner.start()
    wait_for(lambda: ended(log, "first", "joining"))
    runner.close()
    assert finished_text(log, "first") == generate_alone(loaded, long_ids[:1], DecodingSettings(max_new_tokens=12))
    finishes = {event[1]: event[5] for event in log.of("joining") if event[0] == "finish"}
    alone = [generate_alone(loaded, ids, DecodingSettings(max_new_tokens=7)) for ids in (long_ids, long_ids[:3])]
    assert [finishes[i] for i in range(4)] == [alone[0], alone[0], alone[1], alone[1]]
    log.restore()
    assert (max(log.joined) == 2) == (loaded[0].config.model_type != "bloom")
    assert not runner.batches


def test_the_window_slides_back_in_its_buffers_when_the_oldest_row_has_left(loaded, log, monkeypatch):
    """A long row runs; a second joins late and outlives it. When the columns run out the second row's window
    fits before itself in the same buffers and is moved there (no reallocation); its text is still
    model.generate's alone, and so is the first row's."""
    from hftool.serve import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "SPARE_COLUMNS", 1)
    slides = []
    slide = scheduler_module._Slots._slide
    monkeypatch.setattr(scheduler_module._Slots, "_slide", lambda self: slides.append(slide(self)) or slides[-1])
    _, tokenizer = loaded
    ids = tokenizer(PROMPTS[0])["input_ids"][:2]
    runner = scheduler(loaded)
    limits = {"old": 80, "young": 50}  # the columns double as the old row grows: 97 once it is 48 tokens long
    sinks = {name: log.sink(name) for name in limits}
    texts = [0]

    def old_sink(event):
        sinks["old"](event)
        texts[0] += event[0] == "text"
        if texts[0] == 55 and event[0] == "text":  # from the decoding thread: the young row's window will fit
            runner.submit(Job([ids], DecodingSettings(max_new_tokens=limits["young"]), sinks["young"]))

    runner.submit(Job([ids], DecodingSettings(max_new_tokens=limits["old"]), old_sink))
    runner.start()
    wait_for(lambda: ended(log, *limits))
    runner.close()
    for name, limit in limits.items():
        assert finished_text(log, name) == generate_alone(loaded, ids, DecodingSettings(max_new_tokens=limit))
    assert True in slides and False in slides  # slid once the old row had left; reallocated while it was there


def test_a_cache_the_scheduler_cannot_merge_decodes_in_batches_of_its_own(loaded, log, monkeypatch):
    """Models whose cache is not a plain DynamicCache (sliding windows, hybrids): each prefill group stays its
    own batch, rows leave through the cache's own ``batch_select_indices``; tokens still those of generate."""
    from hftool.serve import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "_mergeable", lambda cache: False)
    _, tokenizer = loaded
    encoded = [tokenizer(p)["input_ids"] for p in PROMPTS]
    runner = scheduler(loaded, prefill_chunk=8)
    limits = {"a": 12, "b": 4, "c": 7}
    for (name, limit), ids in zip(limits.items(), encoded, strict=True):
        runner.submit(Job([ids], DecodingSettings(max_new_tokens=limit), log.sink(name)))
    runner.start()
    wait_for(lambda: ended(log, *limits))
    runner.close()
    for (name, limit), ids in zip(limits.items(), encoded, strict=True):
        assert finished_text(log, name) == generate_alone(loaded, ids, DecodingSettings(max_new_tokens=limit))


def test_a_prompt_list_with_n_and_mixed_limits_match_alone(loaded, log):
    _, tokenizer = loaded
    encoded = [tokenizer(p)["input_ids"] for p in PROMPTS]
    runner = scheduler(loaded)
    runner.submit(Job(encoded, DecodingSettings(max_new_tokens=6), log.sink("list")))
    runner.submit(Job([encoded[1]], DecodingSettings(max_new_tokens=11), log.sink("one")))
    runner.start()
    wait_for(lambda: ended(log, "list", "one"))
    runner.close()
    finishes = {event[1]: event[5] for event in log.of("list") if event[0] == "finish"}
    assert [finishes[i] for i in range(3)] == [generate_alone(loaded, ids, DecodingSettings(max_new_tokens=6))
                                               for ids in encoded]
    assert finished_text(log, "one") == generate_alone(loaded, encoded[1], DecodingSettings(max_new_tokens=11))


def test_a_cancelled_job_leaves_at_the_next_step_and_counts_once(loaded, log):
    _, tokenizer = loaded
    ids = tokenizer(PROMPTS[0])["input_ids"]
    metrics = Metrics()
    runner = scheduler(loaded, metrics=metrics)
    job = Job([ids], DecodingSettings(max_new_tokens=60), log.sink("gone"), stream=True)
    sink = log.sink("gone")

    at = []

    def hang_up(event):  # the client goes away after its second piece of text
        sink(event)
        if len(log.of("gone")) == 2:
            job.cancelled.set()
            at.append(len(log.rows))

    job.emit = hang_up
    other = DecodingSettings(max_new_tokens=20)
    runner.submit(job)
    runner.submit(Job([ids], other, log.sink("other")))
    runner.start()
    wait_for(lambda: ended(log, "other"))
    runner.close()
    assert [event[0] for event in log.of("gone")] == ["text", "text"]
    assert finished_text(log, "other") == generate_alone(loaded, ids, other)
    assert metrics.cancelled == 1
    # both rows up to the step that ended in the hang-up, the other row alone from the next step on
    assert set(log.rows[:at[0]]) == {2} and set(log.rows[at[0]:]) == {1}
    assert runner.running == 0 and runner.cache_reserved == 0


def test_the_cache_budget_holds_jobs_back_and_refuses_one_too_large(loaded, log):
    _, tokenizer = loaded
    ids = tokenizer(PROMPTS[0])["input_ids"]
    settings = DecodingSettings(max_new_tokens=8)
    need = len(ids) + 8
    metrics = Metrics()
    runner = scheduler(loaded, max_cache_tokens=need + 5, max_queue=2, metrics=metrics)
    with pytest.raises(TooLarge):
        runner.submit(Job([ids, ids], settings, log.sink("two rows")))
    first = log.sink("first")
    reserved = []

    def first_sink(event):  # what /metrics shows while the first runs ("end": its cache is already free)
        first(event)
        if event[0] != "end":
                reserved.extend(line.split()[1] for line in metrics.render().splitlines()
                            if line.startswith("hftool_cache_tokens_reserved "))

    runner.submit(Job([ids], settings, first_sink))
    runner.submit(Job([ids], settings, log.sink("second")))
    with pytest.raises(QueueFull):
        runner.submit(Job([ids], settings, log.sink("third")))
    runner.start()
    wait_for(lambda: ended(log, "first", "second"))
    runner.close()
    assert log.index("first", "end") < log.index("second", "text")  # the second waited for the first's cache
    assert max(log.rows) == 1 and set(reserved) == {str(need)}
    assert "\nhftool_cache_tokens_reserved 0\n" in metrics.render()
    assert finished_text(log, "first") == finished_text(log, "second") == generate_alone(loaded, ids, settings)


def test_a_seeded_sampled_job_is_reproduced_whoever_decodes_beside_it(gpt2, tiny_gpt2):
    from transformers import set_seed

    model, tokenizer = gpt2
    ids = tokenizer(PROMPTS[2])["input_ids"]
    sampled = DecodingSettings(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7)

    def run(companions: int) -> str:
        log = Log(model)
        try:
            runner = scheduler(gpt2)
            for i in range(companions):
                runner.submit(Job([ids], DecodingSettings(max_new_tokens=5 + i, do_sample=True), log.sink(i)))
            runner.submit(Job([ids], sampled, log.sink("seeded")))
            runner.start()
            wait_for(lambda: ended(log, "seeded", *range(companions)))
            runner.close()
        finally:
            log.restore()
        return finished_text(log, "seeded")

    alone, beside = run(0), run(3)
    assert alone == beside
    set_seed(7)  # what hftool generate --seed 7 does before model.generate
    out = model.generate(input_ids=torch.tensor([ids]), do_sample=True, max_new_tokens=12, temperature=1.5,
                         top_k=50, top_p=0.95, pad_token_id=tokenizer.pad_token_id)
    assert alone == tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_close_drains_the_running_jobs_and_refuses_the_queued(loaded, log):
    """SIGTERM: uvicorn's shutdown closes the scheduler; admitted jobs finish, queued ones get an error."""
    _, tokenizer = loaded
    ids = tokenizer(PROMPTS[0])["input_ids"]
    settings = DecodingSettings(max_new_tokens=30)
    runner = scheduler(loaded, max_cache_tokens=len(ids) + 30)
    sink = log.sink("running")
    closing = []

    def close_after_first_text(event):
        sink(event)
        if event[0] == "text" and not closing:
            closing.append(True)
            runner.closed = True  # what close() does first, from the decoding thread's side of the lock

    runner.submit(Job([ids], settings, close_after_first_text))
    runner.submit(Job([ids], settings, log.sink("queued")))
    runner.start()
    wait_for(lambda: closing)
    runner.close()
    assert log.of("running")[-2][2:4] == ("length", 30) and log.of("running")[-1] == ("end",)
    assert log.of("queued") == [("error", "the server is shutting down; retry on another replica or later")]
    assert not runner.thread.is_alive()


def test_a_failed_step_fails_the_requests_in_flight_and_the_next_one_is_served(loaded, log):
    _, tokenizer = loaded
    ids = tokenizer(PROMPTS[1])["input_ids"]
    runner = scheduler(loaded)
    counting = log.model.forward
    calls = [0]

    def failing_once(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("out of memory")
        return counting(*args, **kwargs)

    log.model.forward = failing_once
    settings = DecodingSettings(max_new_tokens=6)
    runner.submit(Job([ids], settings, log.sink("a")))
    runner.submit(Job([ids], settings, log.sink("b")))
    runner.start()
    wait_for(lambda: ended(log, "a", "b"))
    assert log.of("a")[-1] == log.of("b")[-1] == ("error", "generation failed: RuntimeError: out of memory")
    assert runner.running == 0 and runner.cache_reserved == 0
    runner.submit(Job([ids], settings, log.sink("after")))
    wait_for(lambda: ended(log, "after"))
    runner.close()
    assert finished_text(log, "after") == generate_alone(loaded, ids, settings)


def test_served_gpt2_in_bfloat16_gets_output_major_linear_layers(tiny_gpt2):
    """Unpacked (--no-pack-weights), hftool serve turns GPT-2's Conv1D layers into nn.Linear in bfloat16 on the
    CPU (serve/layout.py): the same products, so the same logits up to bf16 rounding; a float32 model is left as
    it is."""
    from transformers.pytorch_utils import Conv1D

    from hftool.serve.layout import output_major_linears, serving_layout

    model, tokenizer = load_for_generation(ModelSettings(name=str(tiny_gpt2), dtype="bfloat16"))
    unpacked = load_for_generation(ModelSettings(name=str(tiny_gpt2), dtype="bfloat16"))[0]
    assert serving_layout(unpacked, pack_weights=False) == f"{4 * model.config.n_layer} Conv1D layers as nn.Linear"
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()
        assert output_major_linears(model) == 4 * model.config.n_layer
        after = model(input_ids=ids).logits.float()
    assert not any(isinstance(module, Conv1D) for module in model.modules())
    assert (after - before).abs().max() <= 0.02 * before.abs().max()
    float32, _ = load_for_generation(ModelSettings(name=str(tiny_gpt2)))
    assert output_major_linears(float32) == 0
    assert any(isinstance(module, Conv1D) for module in float32.modules())


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
@pytest.mark.parametrize("name", ["gpt2", "bloom", "llama"])
def test_float32_linears_are_packed_for_onednn_on_a_cpu_not_made_by_intel(name, vendor, sharp_gpt2, sharp_bloom,
                                                                          sharp_llama, monkeypatch, capsys):
    """On an AMD CPU a float32 model's linear layers (GPT-2's Conv1D, BLOOM's and Llama's nn.Linear) are packed
    for oneDNN once (serve/layout.py): logits within float32 rounding of the plain ones, and a row joining another
    mid-flight gets the plain model's model.generate tokens alone. On an Intel CPU, with --no-pack-weights, where
    a packed layer disagrees with its original or where the model's forward fails with them, it stays as loaded."""
    from transformers.pytorch_utils import Conv1D

    from hftool import environment
    from hftool.serve import layout

    folder = str({"gpt2": sharp_gpt2, "bloom": sharp_bloom, "llama": sharp_llama}[name])
    monkeypatch.setattr(environment, "cpu_vendor", lambda: vendor)
    plain = load_for_generation(ModelSettings(name=folder))
    linears = sum(type(m) in (torch.nn.Linear, Conv1D) for m in plain[0].modules())
    loaded = load_for_generation(ModelSettings(name=folder))
    model, tokenizer = loaded
    assert layout.serving_layout(load_for_generation(ModelSettings(name=folder))[0], pack_weights=False) is None
    note = layout.serving_layout(model, rows=8)
    if vendor == "GenuineIntel":
        assert note is None and layout.why_not_packed(model) == "an Intel CPU, where MKL's products are at home"
        return
    assert note == f"{linears} linear layers packed for oneDNN"
    assert not any(type(m) in (torch.nn.Linear, Conv1D) for m in model.modules())
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        want, got = plain[0](input_ids=ids).logits, model(input_ids=ids).logits
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    log = Log(model)
    short_joins_long_mid_flight(loaded, log, reference=plain)
    assert max(log.rows) == 2
    capsys.readouterr()
    fresh = load_for_generation(ModelSettings(name=folder))[0]
    fresh.forward = lambda **inputs: fresh.get_output_embeddings().weight  # model code reading a layer's weight
    assert layout.serving_layout(fresh) is None
    assert sum(type(m) in (torch.nn.Linear, Conv1D) for m in fresh.modules()) == linears
    assert "serving the linear layers as loaded (oneDNN packing failed" in capsys.readouterr().err
    monkeypatch.setattr(layout, "TOLERANCE", {"float32": -1.0})  # every probe disagrees: the model stays as it was
    fresh = load_for_generation(ModelSettings(name=folder))[0]
    assert layout.serving_layout(fresh) is None
    assert sum(type(m) in (torch.nn.Linear, Conv1D) for m in fresh.modules()) == linears
    assert "serving the linear layers as loaded (oneDNN packing failed" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gpt2", "bloom", "llama"])
def test_bfloat16_linears_are_packed_for_onednn_on_a_cpu_with_native_bf16(name, sharp_gpt2, sharp_bloom, sharp_llama,
                                                                          monkeypatch):
    """On a CPU with native bf16 a bf16 model's linear layers are packed for oneDNN (serve/layout.py), and a row
    joining another mid-flight gets the plain bf16 model's model.generate tokens alone (sharp GPT-2 and BLOOM:
    bf16 rounding flips none), the logits within bf16 rounding of the plain ones. Where bf16 is emulated they stay
    as loaded (GPT-2's Conv1D as nn.Linear)."""
    from transformers.pytorch_utils import Conv1D

    from hftool import environment
    from hftool.serve import layout

    folder = str({"gpt2": sharp_gpt2, "bloom": sharp_bloom, "llama": sharp_llama}[name])
    settings = ModelSettings(name=folder, dtype="bfloat16")
    plain = load_for_generation(settings)
    linears = sum(type(m) in (torch.nn.Linear, Conv1D) for m in plain[0].modules())
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: False)
    emulated = load_for_generation(settings)[0]
    assert layout.serving_layout(emulated) == (f"{linears - 1} Conv1D layers as nn.Linear" if name == "gpt2" else None)
    assert layout.why_not_packed(emulated) == "this CPU emulates bf16"
    monkeypatch.undo()
    loaded = load_for_generation(settings)
    if layout.why_not_packed(loaded[0]):
        pytest.skip(f"not packed on this CPU: {layout.why_not_packed(loaded[0])}")
    assert layout.serving_layout(loaded[0]) == f"{linears} linear layers packed for oneDNN"
    assert not any(type(m) in (torch.nn.Linear, Conv1D) for m in loaded[0].modules())
    ids = torch.tensor([plain[1](PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        want, got = plain[0](input_ids=ids).logits.float(), loaded[0](input_ids=ids).logits.float()
    assert (got - want).abs().max() <= 0.02 * want.abs().max()
    if name == "llama":
        return  # its batched bf16 tokens part from generate's alone, packed or not: bf16 rounding flips one
    log = Log(loaded[0])
    short_joins_long_mid_flight(loaded, log, reference=plain)
    assert max(log.rows) == 2


@pytest.mark.parametrize("amx", [False, True])
def test_bfloat16_rows_attend_in_float32_slots_on_a_cpu_without_amx(sharp_gpt2, monkeypatch, amx):
    """A bf16 model's slots keep float32 keys and values on a CPU without AMX, where PyTorch's bf16 attention
    kernel is the slow one (serve/flat.py), and the model's own dtype with AMX; either way a row joining another
    mid-flight gets model.generate's tokens alone (a sharp model: bf16 rounding flips none) in bf16 out."""
    from hftool import environment
    from hftool.serve.flat import attention_dtype

    monkeypatch.setattr(environment, "cpu_has_amx_bf16", lambda: amx)
    loaded = load_for_generation(ModelSettings(name=str(sharp_gpt2), dtype="bfloat16"))
    assert attention_dtype(loaded[0]) == (torch.bfloat16 if amx else torch.float32)
    assert attention_dtype(load_for_generation(ModelSettings(name=str(sharp_gpt2)))[0]) == torch.float32
    log = Log(loaded[0])
    buffers, forward = [], loaded[0].forward

    def spying_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        if "flat_step" in kwargs:
            buffers.append(kwargs["flat_step"].layers[0].key_buffer.dtype)
        assert out.logits.dtype == torch.bfloat16
        return out

    loaded[0].forward = spying_forward
    short_joins_long_mid_flight(loaded, log, reference=loaded)
    assert sum(log.joined) >= 1 and max(log.rows) == 2
    assert set(buffers) == {torch.bfloat16 if amx else torch.float32}

