"""hftool serve: the official openai client against a live server on a free loopback port, with a tiny GPT-2
(given a chat template) and a tiny BERT question-answering folder; every bad request gets OpenAI's error shape."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import httpx
import openai
import pytest
import torch
from helpers import run_cli

from hftool.runs.serve import ServeOptions, build_served, exposure_warning
from hftool.schemas.generate import DecodingSettings, GenerateRecipe, ModelSettings
from hftool.serve.app import create_app

pytestmark = pytest.mark.integration  # a real HTTP server on a loopback port

PROMPTS = ["The quick brown fox", "Attention lets every token", "Language models"]
MAX_TOKENS = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn on a free loopback port in a thread of this process (the app is the one hftool serve runs)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(chat_gpt2):
    recipe = GenerateRecipe(model=ModelSettings(name=str(chat_gpt2)), decoding=DecodingSettings(max_new_tokens=8))
    served = build_served(ServeOptions(recipe=recipe, max_batch_size=8, max_queue=32, max_tokens_cap=100))
    server = LiveServer(create_app(served, max_body_bytes=20_000))
    server.served = served
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def hftool_generate(folder, prompt: str, tmp_path, max_tokens: int = MAX_TOKENS) -> str:
    out = tmp_path / "gen.jsonl"
    code, _, err = run_cli(["generate", "-m", str(folder), "-p", prompt, "--greedy", "--max-new-tokens",
                            str(max_tokens), "--no-stream", "-o", str(out), "--overwrite"])
    assert code == 0, err
    return json.loads(out.read_text())["generated"]


def test_greedy_completion_equals_hftool_generate(client, chat_gpt2, tmp_path):
    for prompt in PROMPTS:
        expected = hftool_generate(chat_gpt2, prompt, tmp_path)
        result = client.completions.create(model=str(chat_gpt2), prompt=prompt, max_tokens=MAX_TOKENS,
                                           temperature=0)
        assert result.choices[0].text == expected
        assert result.usage.completion_tokens == MAX_TOKENS
        assert result.choices[0].finish_reason == "length"


def test_list_of_prompts_with_n_and_concurrent_clients_match_alone(client, chat_gpt2):
    alone = [client.completions.create(model=str(chat_gpt2), prompt=p, max_tokens=MAX_TOKENS,
                                       temperature=0).choices[0].text for p in PROMPTS]
    assert len(set(alone)) == len(PROMPTS)
    result = client.completions.create(model=str(chat_gpt2), prompt=PROMPTS, max_tokens=MAX_TOKENS, n=2,
                                       temperature=0, echo=True)
    assert [c.index for c in result.choices] == list(range(6))
    assert [c.text for c in result.choices] == [p + a for p, a in zip(PROMPTS, alone, strict=True) for _ in "ab"]
    results = {}

    def ask(i):
        prompt = PROMPTS[i % 3]
        results[i] = (prompt, client.completions.create(model=str(chat_gpt2), prompt=prompt, max_tokens=MAX_TOKENS,
                                                        temperature=0, stream=i % 2 == 0))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (prompt, response) in results.items():
        text = "".join(c.choices[0].text for c in response) if i % 2 == 0 else response.choices[0].text
        assert text == alone[PROMPTS.index(prompt)]


def test_sampling_is_seeded_and_n_gives_distinct_samples(client, chat_gpt2):
    args = dict(model=str(chat_gpt2), prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=1.5, n=4, seed=7,
                extra_body={"top_k": 50})
    first = [c.text for c in client.completions.create(**args).choices]
    second = [c.text for c in client.completions.create(**args).choices]
    assert first == second
    assert len(set(first)) > 1


def _ended(sink: list[tuple]) -> bool:
    return bool(sink) and sink[-1][0] in ("end", "error")


def _wait(condition) -> None:
    for _ in range(1200):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the scheduler did not get there in time")


def test_batched_jobs_give_the_tokens_of_jobs_alone(live):
    """Jobs queued before the decoding thread starts decode together (mixed lengths and max_tokens)."""
    from hftool.serve.metrics import Metrics
    from hftool.serve.scheduler import Job, Scheduler

    served = live.served
    base = served.batcher
    metrics = Metrics()
    scheduler = Scheduler(base.model, base.tokenizer, base.context, max_batch_size=8, max_queue=8, metrics=metrics)
    encoded = [served.tokenizer(p)["input_ids"] for p in PROMPTS]
    limits = [MAX_TOKENS, 5, 9]
    events: list[list[tuple]] = [[] for _ in PROMPTS]
    for ids, limit, sink in zip(encoded, limits, events, strict=True):
        scheduler.submit(Job([ids], DecodingSettings(max_new_tokens=limit), sink.append))
    scheduler.start()
    _wait(lambda: all(_ended(sink) for sink in events))
    scheduler.close()
    assert metrics.batch_rows.counts[metrics.batch_rows.buckets.index(2)] < metrics.batch_rows.total  # 3 rows
    for sink, ids, limit in zip(events, encoded, limits, strict=True):
        (_, _, reason, tokens, _, text), end = sink[-2:]
        alone = base.model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=limit,
                                    pad_token_id=served.tokenizer.pad_token_id)
        assert text == served.tokenizer.decode(alone[0, len(ids):], skip_special_tokens=True)
        assert (reason, tokens, end) == ("length", limit, ("end",))
        assert "".join(e[2] for e in sink if e[0] == "text") == text


def test_a_cancelled_job_stops_generating(live):
    from hftool.serve.scheduler import Job, Scheduler

    base = live.served.batcher
    scheduler = Scheduler(base.model, base.tokenizer, base.context, max_batch_size=8, max_queue=8)
    ids = live.served.tokenizer(PROMPTS[0])["input_ids"]
    events: list[tuple] = []
    other: list[tuple] = []
    job = Job([ids], DecodingSettings(max_new_tokens=60), events.append)

    def hang_up(event):  # the client goes away after its first piece of text
        events.append(event)
        job.cancelled.set()

    job.emit = hang_up
    scheduler.submit(job)
    scheduler.submit(Job([ids], DecodingSettings(max_new_tokens=20), other.append))
    scheduler.start()
    _wait(lambda: _ended(other))
    scheduler.close()
    assert [e[0] for e in events] == ["text"]
    assert [e[0] for e in other][-2:] == ["finish", "end"] and other[-2][3] == 20


def test_streaming_matches_and_ends_with_done(live, client, chat_gpt2):
    whole = client.completions.create(model=str(chat_gpt2), prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0)
    chunks = list(client.completions.create(model=str(chat_gpt2), prompt=PROMPTS[1], max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    body = {"prompt": PROMPTS[1], "max_tokens": 4, "stream": True, "temperature": 0}
    raw = httpx.post(live.url + "/v1/completions", json=body, timeout=60)
    lines = [line for line in raw.text.split("\n") if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_strings_trim_alone_and_streamed(client, chat_gpt2):
    full = client.completions.create(model=str(chat_gpt2), prompt=PROMPTS[2], max_tokens=MAX_TOKENS,
                                      temperature=0).choices[0].text
    stop = full[4:7]
    expected = full[: full.index(stop)]
    result = client.completions.create(model=str(chat_gpt2), prompt=PROMPTS[2], max_tokens=MAX_TOKENS,
                                        temperature=0, stop=[stop, "never-there"])
    assert result.choices[0].text == expected and result.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=str(chat_gpt2), prompt=PROMPTS[2], max_tokens=MAX_TOKENS,
                                          temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_chat_uses_the_template(client, chat_gpt2, live):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]
    rendered = "system: Be brief.\nuser: The quick brown fox\nassistant:"
    expected = client.completions.create(model=str(chat_gpt2), prompt=rendered, max_tokens=MAX_TOKENS,
                                         temperature=0).choices[0].text
    result = client.chat.completions.create(model=str(chat_gpt2), messages=messages, max_tokens=MAX_TOKENS,
                                            temperature=0, logprobs=True, top_logprobs=2)
    assert result.choices[0].message.content == expected
    assert result.choices[0].message.role == "assistant"
    assert len(result.choices[0].logprobs.content) == MAX_TOKENS
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in result.choices[0].logprobs.content)
    stream = client.chat.completions.create(model=str(chat_gpt2), messages=messages, max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS


def test_chat_without_a_template_is_a_clear_400(client, chat_gpt2, live, monkeypatch):
    monkeypatch.setattr(live.served.tokenizer, "chat_template", None)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=str(chat_gpt2), messages=[{"role": "user", "content": "hi"}])
    assert "no chat template" in caught.value.message and caught.value.body["param"] == "messages"


def test_models_health_and_metrics(live, client, chat_gpt2):
    assert [m.id for m in client.models.list()] == [str(chat_gpt2)]
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    text = httpx.get(live.url + "/metrics").text
    for name in ("hftool_requests_total{endpoint=\"/v1/completions\",status=\"200\"}", "hftool_queue_depth 0",
                 "hftool_request_latency_seconds_bucket", "hftool_generated_tokens_total", "hftool_batch_rows_count"):
        assert name in text
    generated = [line for line in text.splitlines() if line.startswith("hftool_generated_tokens_total ")]
    assert int(generated[0].split()[1]) > 0


BAD = [
    ("invalid JSON", b'{"prompt": "hi",', None, "invalid_json"),
    ("unknown field", {"prompt": "hi", "max_tokenz": 3}, "max_tokenz", "extra_forbidden"),
    ("wrong type", {"prompt": "hi", "max_tokens": "5"}, "max_tokens", "int_type"),
    ("prompt of numbers", {"prompt": 5}, "prompt.str", "string_type"),
    ("missing prompt", {"max_tokens": 5}, "prompt", "missing"),
    ("temperature < 0", {"prompt": "hi", "temperature": -0.5}, "temperature", "invalid_value"),
    ("top_p = 0", {"prompt": "hi", "top_p": 0}, "top_p", "invalid_value"),
    ("top_p > 1", {"prompt": "hi", "top_p": 1.5}, "top_p", "invalid_value"),
    ("empty prompt list", {"prompt": []}, "prompt", "value_error"),
    ("n = 0", {"prompt": "hi", "n": 0}, "n", "invalid_value"),
    ("empty stop", {"prompt": "hi", "stop": [""]}, "stop", "value_error"),
    ("max_tokens beyond context", {"prompt": "fox " * 40, "max_tokens": 100}, "max_tokens", "context_length_exceeded"),
    ("max_tokens above cap", {"prompt": "hi", "max_tokens": 101}, "max_tokens", "max_tokens_too_large"),
    ("prompt longer than context", {"prompt": "fox " * 300}, "prompt", "context_length_exceeded"),
    ("second prompt too long", {"prompt": ["hi", "fox " * 300]}, "prompt.1", "context_length_exceeded"),
    ("logprobs above 5", {"prompt": "hi", "logprobs": 9}, "logprobs", "less_than_equal"),
]


@pytest.mark.parametrize("what, body, param, code", BAD, ids=[b[0] for b in BAD])
def test_bad_completion_requests_are_400_naming_the_field(live, what, body, param, code):
    if isinstance(body, bytes):
        response = httpx.post(live.url + "/v1/completions", content=body,
                              headers={"content-type": "application/json"})
    else:
        response = httpx.post(live.url + "/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"]


def test_other_bad_requests_are_4xx_in_the_error_shape(live, chat_gpt2):
    cases = [
        (httpx.post(live.url + "/v1/completions", content=b'{"prompt": "' + b"a" * 30_000 + b'"}',
                    headers={"content-type": "application/json"}), 413, None),
        (httpx.post(live.url + "/v1/completions", json={"prompt": "hi", "model": "gpt-4"}), 404, "model"),
        (httpx.post(live.url + "/v1/chat/completions", json={"messages": []}), 400, "messages"),
        (httpx.post(live.url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}),
         400, "messages.0.role"),
        (httpx.post(live.url + "/v1/qa", json={"question": "q", "context": "c"}), 400, "model"),
        (httpx.get(live.url + "/v1/nothing"), 404, None),
    ]
    for response, status, param in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["param"] == param and response.json()["error"]["message"]


def test_errors_surface_as_the_clients_exception_types(client, chat_gpt2, live, monkeypatch):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=str(chat_gpt2), prompt="hi", temperature=-1)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")
    monkeypatch.setattr(live.served.batcher, "max_queue", 0)  # the queue is full
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model=str(chat_gpt2), prompt="hi")
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
    monkeypatch.undo()
    assert client.completions.create(model=str(chat_gpt2), prompt="hi", max_tokens=2).usage.completion_tokens == 2


def test_a_client_that_hangs_up_mid_stream_leaves_the_server_healthy(live, client, chat_gpt2):
    with httpx.stream("POST", live.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 80, "stream": True,
                                                                   "temperature": 0}, timeout=60) as response:
        next(response.iter_lines())
    assert client.completions.create(model=str(chat_gpt2), prompt="hi", max_tokens=3).usage.completion_tokens == 3


def _metric(url: str, name: str) -> int:
    line = next(line for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith(name + " "))
    return int(float(line.split()[1]))


def test_clients_that_hang_up_stop_their_generation_and_count_once(live, monkeypatch):
    """One client hangs up while its generation runs, two while queued behind it: none gets another token
    generated, and each counts once in hftool_cancelled_total.

    The decoder is held at its second forward (the first decoding step, after the prompt's) until all three are
    gone, so the test does not depend on speed; the token that step computes is dropped with its row.
    """
    batcher = live.served.batcher  # the scheduler
    gate, jobs, steps = threading.Event(), [], [0]
    forward, submit = batcher.model.forward, batcher.submit

    def held_forward(*args, **kwargs):
        steps[0] += 1
        if steps[0] >= 2:
            assert gate.wait(30)
        return forward(*args, **kwargs)

    def recording_submit(job):
        jobs.append(job)
        submit(job)

    monkeypatch.setattr(batcher.model, "forward", held_forward)
    monkeypatch.setattr(batcher, "submit", recording_submit)
    cancelled = _metric(live.url, "hftool_cancelled_total")
    generated = _metric(live.url, "hftool_generated_tokens_total")
    batches = live.served.metrics.batch_rows.total
    body = {"prompt": PROMPTS[0], "max_tokens": 80, "stream": True, "temperature": 0}
    try:
        with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            for _ in range(300):  # hang up once the decoder holds this request's generation
                if steps[0] >= 2:
                    break
                time.sleep(0.05)
        for _ in range(2):
            with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=30) as response:
                assert response.status_code == 200  # queued behind the held batch; hang up before any text
        for _ in range(300):
            if len(jobs) == 3 and all(job.cancelled.is_set() for job in jobs):
                break
            time.sleep(0.05)
        assert [job.cancelled.is_set() for job in jobs] == [True, True, True]
    finally:
        gate.set()
    for _ in range(300):
        if batcher.depth == 0 and batcher.running == 0 and _metric(live.url, "hftool_cancelled_total") > cancelled:
            break
        time.sleep(0.05)
    assert _metric(live.url, "hftool_cancelled_total") - cancelled == 3
    assert _metric(live.url, "hftool_generated_tokens_total") - generated == 1  # of 80 asked: the prompt's step
    assert live.served.metrics.batch_rows.total - batches == 1  # one decoding step; the queued ones never ran


def test_api_key_is_required_when_set(chat_gpt2, live):
    import dataclasses

    from fastapi.testclient import TestClient

    from hftool.serve.metrics import Metrics

    served = dataclasses.replace(live.served, batcher=None, metrics=Metrics())  # the live one owns its batcher
    with TestClient(create_app(served, api_key="s3cret")) as test_client:
        assert test_client.get("/health").status_code == 200
        denied = test_client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert "s3cret" not in denied.text
        allowed = test_client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert allowed.json()["data"][0]["id"] == str(chat_gpt2)


def test_exposure_warning_only_off_loopback_without_a_key():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None and exposure_warning("0.0.0.0", "k") is None
    assert "without --api-key" in exposure_warning("0.0.0.0", None)


def test_qa_answers_equal_hftool_answer(tiny_bert, tmp_path):
    from fastapi.testclient import TestClient
    from squad_fixtures import hand_examples
    from transformers import BertForQuestionAnswering

    folder = tmp_path / "qa"
    BertForQuestionAnswering.from_pretrained(tiny_bert).save_pretrained(folder)
    shutil.copy(tiny_bert / "tokenizer.json", folder)
    shutil.copy(tiny_bert / "tokenizer_config.json", folder)
    examples = hand_examples()[:2]
    served = build_served(ServeOptions(recipe=GenerateRecipe(model=ModelSettings(name=str(folder))),
                                       qa_window=(128, 32, 30)))
    with TestClient(create_app(served)) as test_client:
        batch = test_client.post("/v1/qa", json={"questions": [{"question": e.question, "context": e.context}
                                                               for e in examples]}).json()
        one = test_client.post("/v1/qa", json={"question": examples[0].question, "context": examples[0].context})
        wrong = test_client.post("/v1/completions", json={"prompt": "hi"})
    assert wrong.status_code == 400 and "question-answering" in wrong.json()["error"]["message"]
    for example, result in zip(examples, batch["results"], strict=True):
        code, out, err = run_cli(["answer", "-m", str(folder), "-q", example.question, "-c", example.context,
                                  "--json", "--max-length", "128", "--doc-stride", "32"])
        assert code == 0, err
        assert result["answers"] == json.loads(out)["answers"]
    assert one.json()["results"][0]["answers"] == batch["results"][0]["answers"]


def test_the_serving_thread_loads_and_listens_on_one_torch_thread_and_gives_its_count_back(tiny_gpt2, monkeypatch):
    """run_serve's own thread holds one torch thread from loading to shutdown, so that it starts no OpenMP team
    beside the decoding thread's (runs/serve.py, ``no_openmp_team``), and gives the caller's count back, here on a
    port already taken (the model is loaded, then listening fails: one line naming the address and the fix)."""
    from hftool.errors import HftoolError
    from hftool.runs import serve as serve_run

    seen, build = [], serve_run.build_all_served

    def recording_build(options):
        seen.append(torch.get_num_threads())
        return build(options)

    monkeypatch.setattr(serve_run, "build_all_served", recording_build)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            options = ServeOptions(recipe=GenerateRecipe(model=ModelSettings(name=str(tiny_gpt2))),
                                   port=taken.getsockname()[1], log_level="critical")
            with pytest.raises(HftoolError, match="could not listen on 127.0.0.1:.*pick another --host/--port"):
                serve_run.run_serve(options)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
