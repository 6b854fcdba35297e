"""hftool serve's encoder endpoints in process (FastAPI's TestClient): /v1/classify, /v1/tag and /v1/qa against the
CLI commands on the same input, /v1/embeddings against sentence-transformers on the real MiniLM, several models in
one server routed by each request's ``model`` field, and concurrent requests sharing one model call."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import run_cli

from hftool.errors import HftoolError
from hftool.runs.serve import ServeOptions, build_all_served, model_kind
from hftool.serve.app import create_app
from hftool.serve.encoders import Coalescer

TEXTS = ["the cat sat on the mat", "a model learns from data and the data is text",
         "tokens are pieces of words", "attention lets every token look at every other token in the sequence"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head_folder(tiny_bert, folder, auto_class, labels: list[str]):
    """The tiny BERT with a ``labels`` head of large random weights, so its predictions differ between labels."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
             "label2id": {label: i for i, label in enumerate(labels)}} if labels else {}
    model = auto_class.from_pretrained(tiny_bert, **extra)
    head = model.qa_outputs if hasattr(model, "qa_outputs") else model.classifier
    head.weight.data.normal_(0, 1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def heads(tiny_bert, tmp_path_factory):
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

    root = tmp_path_factory.mktemp("heads")
    return {"classify": _head_folder(tiny_bert, root / "classify", BertForSequenceClassification,
                                     ["negative", "neutral", "positive"]),
            "tag": _head_folder(tiny_bert, root / "tag", BertForTokenClassification,
                                ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
            "qa": _head_folder(tiny_bert, root / "qa", BertForQuestionAnswering, [])}


@pytest.fixture(scope="module")
def server(heads, minilm, chat_gpt2):
    """One server with every kind of model: named with NAME=PATH, the MiniLM and the GPT-2 by their paths."""
    options = ServeOptions(models=[f"sentiment={heads['classify']}", f"ner={heads['tag']}", f"squad={heads['qa']}",
                                   str(minilm), str(chat_gpt2)], max_batch_size=4, max_queue=8, threads=1,
                           qa_window=(128, 32, 30))
    with TestClient(create_app(build_all_served(options))) as client:
        yield client


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_classify_equals_hftool_classify(server, heads):
    response = server.post("/v1/classify", json={"model": "sentiment", "input": TEXTS})
    assert response.status_code == 200, response.text
    code, out, err = run_cli(["classify", "-m", str(heads["classify"]), *TEXTS, "--json"])
    assert code == 0, err
    expected = _json_lines(out)
    assert len({json.dumps(r["probabilities"]) for r in expected}) == len(TEXTS)  # scores differ per text
    assert [{k: v for k, v in r.items() if k != "index"} for r in response.json()["results"]] == expected
    assert [r["index"] for r in response.json()["results"]] == list(range(len(TEXTS)))
    one = server.post("/v1/classify", json={"input": TEXTS[0]})  # no model: the first classifier
    assert one.json()["model"] == "sentiment" and one.json()["results"][0]["label"] == expected[0]["label"]


def test_tag_equals_hftool_tag(server, heads):
    response = server.post("/v1/tag", json={"model": "ner", "input": TEXTS})
    assert response.status_code == 200, response.text
    code, out, err = run_cli(["tag", "-m", str(heads["tag"]), *TEXTS, "--json"])
    assert code == 0, err
    expected = _json_lines(out)
    assert any(r["entities"] for r in expected)
    assert [{k: v for k, v in r.items() if k != "index"} for r in response.json()["results"]] == expected


def test_qa_questions_are_answered_in_one_call_equal_to_hftool_answer(server, heads, tmp_path, monkeypatch):
    from squad_fixtures import hand_examples

    from hftool.serve.qa import QAService

    examples = hand_examples()[:3]
    calls = []
    answer = QAService.answer
    monkeypatch.setattr(QAService, "answer", lambda self, found, top_k: calls.append(len(found)) or
                        answer(self, found, top_k))
    response = server.post("/v1/qa", json={"model": "squad", "questions": [
        {"question": e.question, "context": e.context, "id": e.id} for e in examples]})
    assert response.status_code == 200, response.text
    assert calls == [3]  # one batched call for the request's questions
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": e.id, "question": e.question, "context": e.context}) + "\n"
                                 for e in examples))
    code, out, err = run_cli(["answer", "-m", str(heads["qa"]), "--file", str(questions), "--json",
                              "--max-length", "128", "--doc-stride", "32"])
    assert code == 0, err
    assert [{"id": r["id"], "question": r["question"], "answers": r["answers"]}
            for r in response.json()["results"]] == _json_lines(out)


def test_embeddings_equal_sentence_transformers(server, minilm):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    texts = [*TEXTS, "short", "a much longer sentence " * 80]  # the last one past MiniLM's 256 tokens
    response = server.post("/v1/embeddings", json={"model": str(minilm), "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(texts)))
    ours = np.array([d["embedding"] for d in body["data"]])
    theirs = SentenceTransformer(str(minilm), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    lengths = [min(len(tokenizer(t)["input_ids"]), 256) for t in texts]
    assert body["usage"] == {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)}

    ids = tokenizer(TEXTS[1])["input_ids"]  # OpenAI's token-id input; no model field: the first encoder
    by_ids = server.post("/v1/embeddings", json={"input": ids, "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(by_ids["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, theirs[1], atol=1e-5)
    assert by_ids["usage"]["prompt_tokens"] == len(ids)


def test_models_lists_every_served_model(server, heads, minilm, chat_gpt2):
    names = [m["id"] for m in server.get("/v1/models").json()["data"]]
    assert names == ["sentiment", "ner", "squad", str(minilm), str(chat_gpt2)]


def test_each_request_goes_to_the_model_it_names(server, chat_gpt2):
    completion = server.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 2})  # no model field
    assert completion.status_code == 200 and completion.json()["model"] == str(chat_gpt2)
    unknown = server.post("/v1/classify", json={"model": "nope", "input": "hi"})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("not_found_error", "model_not_found", "model")
    assert "'nope'" in error["message"] and "'sentiment', 'ner', 'squad'" in error["message"]


@pytest.mark.parametrize("path, body, fits", [
    ("/v1/classify", {"input": "hi"}, "POST /v1/completions"),
    ("/v1/completions", {"prompt": "hi"}, "POST /v1/classify"),
    ("/v1/embeddings", {"input": "hi"}, "POST /v1/tag"),
    ("/v1/tag", {"input": "hi"}, "POST /v1/embeddings"),
    ("/v1/qa", {"question": "who?", "context": "me"}, "POST /v1/classify"),
])
def test_a_model_of_another_kind_is_a_400_naming_the_endpoint_that_fits(server, chat_gpt2, minilm, path, body,
                                                                          fits):
    model = {"POST /v1/completions": str(chat_gpt2), "POST /v1/classify": "sentiment", "POST /v1/tag": "ner",
             "POST /v1/embeddings": str(minilm)}[fits]
    response = server.post(path, json={**body, "model": model})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("wrong_endpoint", "model") and fits in error["message"]


def test_an_endpoint_without_a_model_of_its_kind_names_what_is_served(heads):
    options = ServeOptions(models=[str(heads["classify"])])
    with TestClient(create_app(build_all_served(options))) as client:
        response = client.post("/v1/embeddings", json={"input": "hi"})
    assert response.status_code == 400
    assert "no encoder is served here" in response.json()["error"]["message"]
    assert "POST /v1/classify" in response.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": ["a", " "]}, "input"),
    ({"input": []}, "input"),
    ({"input": [[101, 102], [10**9]]}, "input.1"),
    ({"input": "a", "dimensions": 12}, "dimensions"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_embedding_requests_are_400_naming_the_field(server, body, param):
    response = server.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_two_models_of_one_name_are_refused(heads):
    options = ServeOptions(models=[f"m={heads['classify']}", f"m={heads['tag']}"])
    with pytest.raises(HftoolError, match="two models are named 'm'; name them apart with --model NAME=PATH"):
        create_app(build_all_served(options))


def test_model_kinds(heads, minilm, tiny_bert, chat_gpt2):
    assert [model_kind(str(heads[k])) for k in ("classify", "tag", "qa")] == ["classify", "tag", "qa"]
    assert model_kind(str(minilm)) == model_kind(str(tiny_bert)) == "embed"  # BertModel, BertForPreTraining
    assert model_kind(str(chat_gpt2)) == "generate"


def test_requests_waiting_on_a_busy_model_share_its_next_call():
    """The Coalescer: while one call runs, the requests that arrive are run together next, those of another key
    apart; a request whose inputs fail alone gets the error, the others their results."""
    release = threading.Event()
    calls = []

    def run(items, key):
        calls.append((list(items), key))
        if len(calls) == 1:
            release.wait(30)
        if "bad" in items:
            raise ValueError("bad input")
        return [f"{item}!" for item in items]

    async def scenario():
        coalescer = Coalescer(run)
        first = asyncio.create_task(coalescer.submit(["a"], key=1))
        while not calls:
            await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(coalescer.submit(items, key=key))
                   for items, key in ((["b", "c"], 1), (["d"], 2), (["bad"], 1), (["e"], 1))]
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*waiting, return_exceptions=True)

    first, rest = asyncio.run(scenario())
    assert first == ["a!"]
    assert rest[0] == ["b!", "c!"] and rest[1] == ["d!"] and rest[3] == ["e!"]
    assert isinstance(rest[2], ValueError)
    assert calls[:3] == [(["a"], 1), (["b", "c", "bad", "e"], 1), (["b", "c"], 1)]
    assert (["d"], 2) in calls


def test_embedding_length_is_sentence_transformers_max_seq_length(minilm, monkeypatch, tmp_path):
    """A folder's sentence_bert_config.json, or a Hub repository's cached one; else the model's own limit."""
    from types import SimpleNamespace

    from hftool.serve.encoders import embedding_length

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    tokenizer = SimpleNamespace(model_max_length=int(1e30))  # transformers' "no limit"
    assert embedding_length(str(minilm), model, tokenizer) == 256
    cached = {"sentence-transformers/all-MiniLM-L6-v2": str(minilm / "sentence_bert_config.json")}
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: cached.get(repo))
    assert embedding_length("sentence-transformers/all-MiniLM-L6-v2", model, tokenizer) == 256
    assert embedding_length("someone/bert-without-it", model, tokenizer) == 512
    (tmp_path / "sentence_bert_config.json").write_text("{}")
    with pytest.raises(HftoolError, match="sentence_bert_config.json has no readable max_seq_length"):
        embedding_length(str(tmp_path), model, tokenizer)


@pytest.mark.parametrize("command, warning", [
    ("classify", "warning: truncated 2 of 3 text(s) longer than 6 tokens"),
    ("tag", "warning: 2 of 3 text(s) longer than 6 tokens were truncated"),
])
def test_the_cli_still_counts_truncated_texts(heads, command, warning):
    """The CLI commands run the same code as the endpoints (classify_loaded, tag_loaded) and still warn of cuts."""
    code, _, err = run_cli([command, "-m", str(heads[command]), "--max-length", "6", "hi", TEXTS[1], TEXTS[3]])
    assert code == 0, err
    assert warning in err
