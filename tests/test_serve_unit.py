"""hftool serve in process (FastAPI's TestClient, no port) on the tiny GPT-2: the settings a request decodes with,
the bounds it is checked by, the request shapes OpenAI clients send, the API key and the access log.

Not marked integration: ``make test-unit`` runs the scheduler and the app here, on a model of a few kilobytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from hftool.cli.generate import _recipe
from hftool.config import load_recipe
from hftool.errors import HftoolError
from hftool.generation.loading import load_for_generation
from hftool.runs.serve import ServeOptions, build_served, uvicorn_config
from hftool.schemas.generate import DecodingSettings, GenerateRecipe, ModelSettings
from hftool.serve import scheduler as scheduler_module
from hftool.serve.app import Served, create_app
from hftool.serve.metrics import Metrics

PROMPT = "The quick brown fox"

# One non-default value per decoding setting (with what it needs to be valid alone). A new field of
# DecodingSettings fails test_every_decoding_setting_is_in_the_walk until it is added here.
NON_DEFAULT = {
    "max_new_tokens": {"max_new_tokens": 3},
    "do_sample": {"do_sample": True, "seed": 3},
    "temperature": {"temperature": 0.5},
    "top_k": {"top_k": 5},
    "top_p": {"top_p": 0.5},
    "num_beams": {"num_beams": 2},
    "num_return_sequences": {"num_return_sequences": 2, "do_sample": True, "seed": 1},
    "repetition_penalty": {"repetition_penalty": 1.3},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 2},
    "stop": {"stop": ["e"]},
    "seed": {"seed": 11},
    "fast_decode": {"fast_decode": False},
}
REFUSED_BY_SERVE = {"num_beams"}  # serve streams one beam per sequence; it refuses a beam recipe at start


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(chat_gpt2):
    return load_for_generation(ModelSettings(name=str(chat_gpt2)))


@pytest.fixture
def serve_recipe(loaded, monkeypatch, tmp_path):
    """``serve(recipe)``: a TestClient on the app ``hftool serve --recipe FILE`` builds (the model loaded once
    per module), and the recipe's settings as ``hftool generate --recipe FILE`` would check them."""
    monkeypatch.setattr("hftool.generation.loading.load_for_generation", lambda *args, **kwargs: loaded)
    clients = []

    def serve(decoding: dict, api_key: str | None = None, **limits):
        path = tmp_path / f"recipe{len(clients)}.yaml"
        path.write_text(json.dumps({"command": "generate", "model": {"name": "tiny"}, "decoding": decoding}))
        recipe = _recipe(load_recipe(GenerateRecipe, str(path), []), {})  # what generate and serve both run
        options = ServeOptions(recipe=recipe, **{"max_batch_size": 8, "max_queue": 8, "threads": 1, **limits})
        options.validate()
        monkeypatch.setattr("hftool.runs.serve.model_kind", lambda name, trust_remote_code=False: "generate")
        client = TestClient(create_app(build_served(options), api_key=api_key))
        clients.append(client.__enter__())
        return client, recipe.decoding

    yield serve
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def recorded(monkeypatch):
    """The settings every job carries and every row's logits processors are built from, as the scheduler sees
    them."""
    seen = {"jobs": [], "rows": []}
    build = scheduler_module.logits_processors

    def recording_build(settings):
        seen["rows"].append(settings)
        return build(settings)

    submit = scheduler_module.Scheduler.submit

    def recording_submit(self, job):
        seen["jobs"].append(job.settings)
        submit(self, job)

    monkeypatch.setattr(scheduler_module, "logits_processors", recording_build)
    monkeypatch.setattr(scheduler_module.Scheduler, "submit", recording_submit)
    return seen


def test_every_decoding_setting_is_in_the_walk():
    assert set(NON_DEFAULT) == {f.name for f in dataclasses.fields(DecodingSettings)}
    for name, values in NON_DEFAULT.items():
        assert values[name] != getattr(DecodingSettings(), name), name


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_decoding_setting_reaches_the_decoder(name, serve_recipe, recorded):
    """Issue 24 item 15: a request decodes with exactly the settings hftool generate uses for the same recipe;
    the scheduler decodes every row of the job with those settings whole."""
    if name in REFUSED_BY_SERVE:
        with pytest.raises(HftoolError, match="serve decodes one beam"):
            serve_recipe(NON_DEFAULT[name])
        return
    client, expected = serve_recipe(NON_DEFAULT[name])
    response = client.post("/v1/completions", json={"prompt": PROMPT})
    assert response.status_code == 200, response.text
    assert recorded["jobs"] == [expected]
    assert recorded["rows"] == [expected] * expected.num_return_sequences
    choices = response.json()["choices"]
    assert len(choices) == expected.num_return_sequences
    assert response.json()["usage"]["completion_tokens"] <= expected.max_new_tokens * len(choices)
    for choice in choices:
        assert not any(stop in choice["text"] for stop in expected.stop)


def test_request_fields_override_the_recipe(serve_recipe, recorded):
    client, recipe = serve_recipe({"no_repeat_ngram_size": 3, "repetition_penalty": 1.2, "seed": 5})
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 7, "seed": 9, "n": 2,
            "stop": ["x"], "repetition_penalty": 1.1}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert recorded["jobs"] == [dataclasses.replace(recipe, max_new_tokens=4, do_sample=True, temperature=0.7,
                                                    top_p=0.9, top_k=7, seed=9, num_return_sequences=2,
                                                    stop=["x"], repetition_penalty=1.1)]


def test_a_request_larger_than_the_cache_budget_is_a_400(serve_recipe):
    client, _ = serve_recipe({}, max_cache_tokens=40)
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20, "n": 2, "temperature": 1})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("max_tokens", "cache_budget_exceeded")
    assert "--max-cache-tokens" in error["message"]
    assert client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20}).status_code == 200


BAD_VALUES = [  # issue 24 items 8 and 11: the caller's error, a 400 naming the field, never a 5xx
    ("seed -1", {"temperature": 1, "seed": -1}, "seed"),
    ("seed 2**32", {"temperature": 1, "seed": 2**32}, "seed"),
    ("greedy seed 2**32", {"seed": 2**32}, "seed"),
    ("temperature tiny", {"temperature": 1e-300}, "temperature"),
    ("temperature < 0", {"temperature": -0.5}, "temperature"),
    ("top_p 0", {"top_p": 0}, "top_p"),
    ("top_p > 1", {"top_p": 1.5}, "top_p"),
    ("top_k < 0", {"top_k": -1}, "top_k"),
    ("repetition_penalty 0", {"repetition_penalty": 0}, "repetition_penalty"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("n 0", {"n": 0}, "n"),
]


@pytest.mark.parametrize("body, param", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_out_of_bound_settings_are_400_naming_the_field(serve_recipe, body, param):
    client, _ = serve_recipe({})
    response = client.post("/v1/completions", json={"prompt": PROMPT, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_value")
    assert error["message"].startswith(f"'{param}' = ")


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_numbers_are_400(serve_recipe, value):
    client, _ = serve_recipe({})
    for field in ("temperature", "top_p", "repetition_penalty"):
        response = client.post("/v1/completions", content=f'{{"prompt": "hi", "{field}": {value}}}',
                               headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == field


def test_the_openai_client_gets_a_bad_request_for_a_bad_seed(serve_recipe):
    """The openai client retries a 5xx three times; a 400 it raises at once."""
    import openai

    client, _ = serve_recipe({})
    openai_client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", max_retries=0,
                                  http_client=client)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.completions.create(model="tiny", prompt=PROMPT, temperature=1, seed=-1)
    assert caught.value.body["param"] == "seed"


def test_token_id_prompts_decode_as_their_text(serve_recipe, loaded):
    """Issue 24 item 14: OpenAI's token-id prompts, one ([1, 2, 3]) or several ([[1, 2], [3]])."""
    _, tokenizer = loaded
    client, _ = serve_recipe({"max_new_tokens": 4})
    texts = [PROMPT, "Attention lets every token"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    by_text = client.post("/v1/completions", json={"prompt": texts}).json()["choices"]
    by_ids = client.post("/v1/completions", json={"prompt": ids, "echo": True}).json()["choices"]
    assert [c["text"] for c in by_ids] == [t + c["text"] for t, c in zip(texts, by_text, strict=True)]
    one = client.post("/v1/completions", json={"prompt": ids[0]}).json()
    assert one["choices"][0]["text"] == by_text[0]["text"] and one["usage"]["prompt_tokens"] == len(ids[0])
    for bad, param in (([[1, 2], [len(tokenizer) + 5]], "prompt.1"), ([-1], "prompt")):
        response = client.post("/v1/completions", json={"prompt": bad})
        assert response.status_code == 400 and response.json()["error"]["param"] == param
        assert response.json()["error"]["code"] == "invalid_token_id"


def test_chat_content_parts_are_taken_as_text(serve_recipe):
    client, _ = serve_recipe({"max_new_tokens": 4})
    as_string = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a\nb"}]})
    as_parts = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert as_parts.status_code == 200, as_parts.text
    assert as_parts.json()["choices"] == as_string.json()["choices"]
    image = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert image.status_code == 400
    error = image.json()["error"]
    assert error["param"] == "messages.0.content" and '"image_url"' in error["message"]
    assert "Value error" not in error["message"]


class _NoAnswers:
    def answer(self, examples, top_k):
        return [[] for _ in examples]


@pytest.mark.parametrize("body, param", [
    ({"question": "Who?", "context": ""}, "context"),
    ({"question": "", "context": "Paris."}, "question"),
    ({"question": "Who?"}, "context"),
    ({"questions": [{"question": "Who?", "context": ""}]}, "questions.0.context"),
])
def test_qa_with_an_empty_or_missing_field_is_a_400_naming_it(body, param):
    served = Served(name="qa", metrics=Metrics(), qa=_NoAnswers())
    with TestClient(create_app(served)) as client:
        response = client.post("/v1/qa", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "validation error" not in error["message"] and "pydantic" not in error["message"]


def test_bearer_scheme_is_case_insensitive(serve_recipe):
    client, _ = serve_recipe({}, api_key="s3cret")
    for header in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret"):
        assert client.get("/v1/models", headers={"Authorization": header}).status_code == 200, header
    for header in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearers3cret"):
        assert client.get("/v1/models", headers={"Authorization": header}).status_code == 401, header


def test_the_access_log_never_holds_a_query_string():
    """uvicorn with hftool serve's own settings on a loopback port: a key a client puts in the query string
    never reaches the access log; the path does."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(Served(name="m", metrics=Metrics()))
    config = uvicorn_config(app, ServeOptions(port=port))
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        thread.start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models?api_key=SECRET-1&x=2").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/health?token=SECRET-2").status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
        access.removeHandler(handler)
    assert any("/v1/models" in line for line in lines) and any("/health" in line for line in lines)
    assert not any("SECRET" in line or "?" in line for line in lines), lines


def test_serve_refuses_a_model_it_has_no_endpoint_for_naming_serve(tmp_path):
    """A BERT saved with a multiple-choice head is neither a causal LM nor an encoder head hftool serves."""
    from transformers import BertConfig

    BertConfig(architectures=["BertForMultipleChoice"], vocab_size=50, hidden_size=8, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=16).save_pretrained(tmp_path)
    with pytest.raises(HftoolError, match="serve needs a decoder"):
        build_served(ServeOptions(recipe=GenerateRecipe(model=ModelSettings(name=str(tmp_path)))))
