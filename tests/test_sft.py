"""``hftool finetune sft`` (issue 26): the chat data formats, masking checked against the chat template, the
appended end-of-text token, packing without leakage (packed loss == unpacked loss), truncation counts, and a
tiny end-to-end run whose folder chats in plain transformers and through hftool serve's app."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import run_cli

from hftool.data.sft import entity_spans, read_conversations
from hftool.errors import HftoolError
from hftool.tasks import sft

CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox?"},
                  {"role": "assistant", "content": "jumps over"}], "references": ["jumps over"]},
    {"instruction": "Complete the sentence.", "input": "Attention lets every token",
     "output": "look at every other token.", "references": ["look at every other token"]},
    {"prompt": "Language models predict", "completion": "the next word."},
    {"messages": [{"role": "user", "content": "Transformers read"}, {"role": "assistant", "content": "sentences"},
                  {"role": "user", "content": "how?"}, {"role": "assistant", "content": "at once."}]},
    {"prompt": [{"role": "user", "content": "A robot must"}], "completion": [{"role": "assistant", "content": "obey"}]},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tokenizer(byte_bpe_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(byte_bpe_tokenizer)
    assert sft.use_chat_template(tok, "auto") == list(sft.CHATML_TOKENS)  # hftool's BPE has no ChatML tokens
    return tok


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    return read_conversations(write_jsonl(tmp_path_factory.mktemp("chats") / "chats.jsonl", CHATS), "--train-file")


def targets_text(tokenizer, item) -> str:
    return tokenizer.decode(item["input_ids"][item["targets"]])


def test_every_jsonl_layout_becomes_a_conversation(conversations):
    assert [c.messages[-1]["content"] for c in conversations] == ["jumps over", "look at every other token.",
                                                                  "the next word.", "at once.", "obey"]
    assert conversations[1].messages[0] == {"role": "user",
                                            "content": "Complete the sentence.\n\nAttention lets every token"}
    assert conversations[2].messages[0] == {"role": "user", "content": "Language models predict"}
    assert conversations[0].references == ("jumps over",) and conversations[2].references == ()
    assert conversations[3].where.endswith("chats.jsonl:4")
    assert conversations[4].messages == ({"role": "user", "content": "A robot must"},  # TRL's conversational layout
                                         {"role": "assistant", "content": "obey"})


def test_loss_is_on_the_assistant_turns_only_with_chatml(tokenizer, conversations):
    items, stats = sft.encode(tokenizer, conversations, 128, train_on_prompt=False)
    assert stats.conversations == 5 and stats.truncated == 0
    end, eos = "<|im_end|>\n", tokenizer.eos_token
    assert [targets_text(tokenizer, i) for i in items] == [
        f"jumps over{end}{eos}", f"look at every other token.{end}{eos}", f"the next word.{end}{eos}",
        f"sentences{end}at once.{end}{eos}", f"obey{end}{eos}"]
    assert all(i["input_ids"][-1] == tokenizer.eos_token_id and i["targets"][-1] for i in items)  # EOS appended


def test_masking_follows_the_tokenizers_own_template(chat_gpt2, conversations):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_gpt2)  # "role: content\n" turns, "assistant:" generation prompt
    assert sft.use_chat_template(tok, "auto") == []
    items, _ = sft.encode(tok, conversations[3:], 128, train_on_prompt=False)
    assert targets_text(tok, items[0]) == f" sentences\n at once.\n{tok.eos_token}"
    rendered = tok.apply_chat_template(list(conversations[3].messages), tokenize=False)
    assert tok.decode(items[0]["input_ids"]) == rendered + tok.eos_token


def test_chatml_tokens_are_added_only_where_missing_and_template_refusals_name_the_record(tokenizer, conversations):
    assert sft.use_chat_template(tokenizer, "chatml") == []  # the fixture's tokenizer holds them already
    assert tokenizer.chat_template == sft.CHATML_TEMPLATE
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}"
                            "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(HftoolError) as error:
        sft.encode(strict, conversations, 128, False)
    assert str(error.value).endswith("chats.jsonl:1: the chat template refused this conversation (no system role)")


def test_train_on_prompt_trains_on_every_token_but_the_first(tokenizer, conversations):
    items, _ = sft.encode(tokenizer, conversations, 128, train_on_prompt=True)
    assert all(not i["targets"][0] and i["targets"][1:].all() for i in items)


def test_truncation_is_counted_and_answerless_conversations_dropped(tokenizer, conversations):
    full, _ = sft.encode(tokenizer, conversations, 128, False)
    lengths = [len(i["input_ids"]) for i in full]
    limit = lengths[0] - 2  # cuts the first conversation inside its answer
    items, stats = sft.encode(tokenizer, conversations, limit, False)
    assert stats.truncated == sum(n > limit for n in lengths) >= 1
    assert all(len(i["input_ids"]) <= limit for i in items)
    tiny, stats = sft.encode(tokenizer, conversations, 8, False)  # only the system / user turns fit
    assert stats.dropped == len(conversations) - len(tiny) > 0
    assert "cut to data.max_length=8" in stats.report("training data", 8)
    ends, stats = sft.encode(tokenizer, conversations, 8, False, truncation="keep_end")  # the answer's end stays
    assert stats.truncated == len(conversations) and stats.dropped == 0
    assert all(len(i["input_ids"]) == 8 and i["input_ids"][-1] == tokenizer.eos_token_id for i in ends)
    assert all(not i["targets"][0] for i in ends)


def test_packed_loss_equals_unpacked_loss(tiny_gpt2, tokenizer, conversations):
    """Positions restart per conversation and attention stays inside it, so packing changes nothing."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    model.resize_token_embeddings(len(tokenizer))
    model.eval()
    items, _ = sft.encode(tokenizer, conversations, 128, False)
    rows = sft.pack(items, 128)
    assert len(rows) < len(items)
    task = sft.SftTask(tokenizer, 128)
    with torch.no_grad():
        alone = sum(task.loss_sum(model, task.collate([item], 0)) for item in items)
        padded = task.loss_sum(model, task.collate(items, 0))
        packed = task.loss_sum(model, task.collate(rows, 0))
        leaky = dict(task.collate(rows, 0), attention_mask=torch.ones_like(task.collate(rows, 0)["input_ids"]))
        leaked = task.loss_sum(model, leaky)
        fused = sft.SftTask(tokenizer, 128, fused_head=True)  # the head projected inside the loss, as GPT-2 trains
        packed_fused = fused.loss_sum(model, fused.collate(rows, 0))
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed_fused, alone, rtol=1e-5, atol=1e-4)
    assert not torch.isclose(leaked, alone, rtol=1e-4)  # the check can fail: attention across conversations
    assert task.count_targets(task.collate(rows, 0)) == sum(int(i["targets"].sum()) for i in items)


def test_the_fused_loss_trains_the_new_chatml_rows_of_a_lora_model_as_the_plain_loss_does(tiny_gpt2, tokenizer,
                                                                                          conversations):
    """Under peft's trainable tokens the head is a wrapper: the fused loss reads its weight with the trained rows."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from hftool.adapters import apply_adapter
    from hftool.schemas.adapter import AdapterSettings
    from hftool.tasks.lm_head_loss import fused_head_applies

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    model.resize_token_embeddings(len(tokenizer))
    new_rows = tokenizer.convert_tokens_to_ids(list(sft.CHATML_TOKENS))
    model = apply_adapter(model, AdapterSettings(kind="lora", r=2, alpha=4, dropout=0.0), "causal-lm", new_rows)
    deltas = [p for name, p in model.named_parameters() if "trainable_tokens_delta" in name]
    assert len(deltas) == 1  # the output head is tied to the input rows
    with torch.no_grad():
        deltas[0].add_(torch.randn_like(deltas[0]))  # trained rows that differ from the frozen matrix's
    assert fused_head_applies(model, SimpleNamespace(shards_parameters=False, static_shapes=False))
    items, _ = sft.encode(tokenizer, conversations, 128, False)
    losses, gradients = [], []
    for fused in (False, True):
        task = sft.SftTask(tokenizer, 128, fused_head=fused)
        model.zero_grad()
        loss = task.loss_sum(model, task.collate(items, 0))
        loss.backward()
        losses.append(loss.detach())
        gradients.append(deltas[0].grad.clone())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-5)
    assert gradients[0].abs().sum() > 0


def test_pack_keeps_conversations_whole_within_the_row_length():
    items = [{"input_ids": np.arange(n), "targets": np.ones(n, dtype=bool)} for n in (5, 4, 3, 6)]
    rows = sft.pack(items, 10)
    assert [len(r["input_ids"]) for r in rows] == [9, 9]
    assert rows[0]["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_the_real_data_sets_become_chats(tmp_path):
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{
        "context": "Denver won the game.", "qas": [{"id": "q1", "question": "Who won?",
                                                   "answers": [{"text": "Denver", "answer_start": 0}]}]}]}]}))
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text("sentence\tlabel\na fine film \t1\ndull\t0\n")
    conll = tmp_path / "conll.txt"
    conll.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\nHello UH O O\n")
    (question,) = read_conversations(squad, "--train-file", "squad")
    assert question.messages[1]["content"] == "Context: Denver won the game.\n\nQuestion: Who won?"
    assert question.messages[2]["content"] == "Denver" and question.references == ("Denver",)
    assert [c.messages[-1]["content"] for c in read_conversations(sst2, "--train-file", "sst2")] == [
        "positive", "negative"]
    assert [c.messages[-1]["content"] for c in read_conversations(conll, "--train-file", "conll")] == [
        "EU (ORG); German (MISC)", "none"]


def test_entity_spans_join_inside_tokens():
    assert entity_spans(["New", "York", "is", "big", "Paris"], ["B-LOC", "I-LOC", "O", "O", "B-LOC"]) == [
        (["New", "York"], "LOC"), (["Paris"], "LOC")]


@pytest.mark.parametrize(("line", "expected"), [
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "chats.jsonl:1: messages[0]: role 'robot' is not one"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "chats.jsonl:1: no 'assistant' message"),
    ('{"instruction": "Say hi."}', "chats.jsonl:1: field 'output' is missing"),
    ('{"prompt": "hi", "completion": 3}', "chats.jsonl:1: field 'completion' is int, not text"),
    ('{"text": "hi"}', "chats.jsonl:1: unknown record layout (keys: text)"),
    ('{"prompt": "hi", "completion": "yo", "references": "yo"}', "'references' must be a list of texts"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "completion": []}',
     "chats.jsonl:1: field 'completion' must be a non-empty list"),
    ("[1, 2]", "chats.jsonl:1: expected a JSON object per line, got list"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, line, expected):
    path = tmp_path / "chats.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(HftoolError) as error:
        read_conversations(path, "--train-file")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_answer_scores_take_the_best_reference():
    assert sft.answer_scores(["the Broncos", "x"], [("Denver Broncos", "Broncos"), ("y",)]) == {
        "exact_match": 50.0, "f1": 50.0}


def sft_args(model, train, validation, output, *extra):
    return ["finetune", "sft", "-r", "sft-gpt2-mini-squad", f"model.name_or_path={model}", "data.format=auto",
            "--train-file", str(train), "--validation-file", str(validation), "data.max_length=64",
            f"train.output_dir={output}", "train.max_steps=3", "train.batch_size=2", "train.lr=1e-3",
            "train.log_every=1", "train.save_every=0", "train.mixed_precision=no", "train.report_to=none",
            "evaluation.max_new_tokens=4", *extra]


@pytest.fixture(scope="module")
def sft_run(tiny_gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-run")
    train = write_jsonl(root / "train.jsonl", CHATS * 2)
    validation = write_jsonl(root / "dev.jsonl", CHATS[:2])
    code, out, err = run_cli(sft_args(tiny_gpt2, train, validation, root / "out", "data.packing=true"))
    assert code == 0, err[-3000:]
    return root / "out", out + err


def test_finetune_sft_reports_and_scores(sft_run):
    out, log = sft_run
    assert "training data: 10 conversations" in log and "0 cut to data.max_length=64" in log
    assert "packed 10 conversations into" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_loss", "eval_perplexity", "eval_exact_match", "eval_f1", "train_truncated"} <= set(metrics)
    predictions = json.loads((out / "predictions.json").read_text())
    assert [p["references"] for p in predictions] == [["jumps over"], ["look at every other token"]]
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    saved_template = tokenizer_config.get("chat_template") or (out / "chat_template.jinja").read_text()
    assert saved_template == sft.CHATML_TEMPLATE


def test_the_output_chats_in_plain_transformers(sft_run):
    """No hftool import: AutoTokenizer.apply_chat_template and generate on the saved folder."""
    out, _ = sft_run
    script = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        model = AutoModelForCausalLM.from_pretrained({str(out)!r})
        assert len(tokenizer) == model.get_input_embeddings().num_embeddings
        ids = tokenizer.apply_chat_template([{{"role": "user", "content": "The quick brown fox?"}}],
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        text = tokenizer.decode(ids["input_ids"][0])
        assert text.endswith("<|im_start|>assistant\\n"), text
        output = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert "hftool" not in sys.modules
        print("ok", output.shape[1] > ids["input_ids"].shape[1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout.startswith("ok True"), result.stderr[-2000:]


@pytest.mark.parametrize("run", ["sft_run", "sft_lora_run"])
def test_the_output_answers_a_chat_request_through_serve(run, request, tmp_path):
    from fastapi.testclient import TestClient

    from hftool.cli.generate import _recipe
    from hftool.config import load_recipe
    from hftool.runs.serve import ServeOptions, build_served
    from hftool.schemas.generate import GenerateRecipe
    from hftool.serve.app import create_app

    out, _ = request.getfixturevalue(run)
    path = tmp_path / "serve.yaml"
    path.write_text(json.dumps({"command": "generate", "model": {"name": str(out)},
                                "decoding": {"max_new_tokens": 4}}))
    options = ServeOptions(recipe=_recipe(load_recipe(GenerateRecipe, str(path), []), {}), max_batch_size=2,
                           max_queue=2, threads=1)
    options.validate()
    with TestClient(create_app(build_served(options))) as client:
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi?"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 1
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


LORA = ["adapter.kind=lora", "adapter.r=2", "adapter.alpha=4", "train.lr=1e-2"]
CHATML_PROMPT = "<|im_start|>user\nThe quick brown fox?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def sft_lora_run(tiny_gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-lora-run")
    train = write_jsonl(root / "train.jsonl", CHATS * 2)
    validation = write_jsonl(root / "dev.jsonl", CHATS[:2])
    code, out, err = run_cli(sft_args(tiny_gpt2, train, validation, root / "out", *LORA))
    assert code == 0, err[-3000:]
    return root / "out", out + err


def test_a_lora_sft_run_trains_the_adapters_and_the_added_chatml_rows_only(sft_lora_run, tiny_gpt2):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    out, log = sft_lora_run
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "metrics.json"} <= names
    assert "model.safetensors" not in names  # the base weights stay in the base folder
    config = json.loads((out / "adapter_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    chatml_ids = tokenizer.convert_tokens_to_ids(list(sft.CHATML_TOKENS))
    base_vocabulary = len(AutoTokenizer.from_pretrained(tiny_gpt2))
    assert config["trainable_token_indices"] == chatml_ids and min(chatml_ids) >= base_vocabulary
    weights = load_file(out / "adapter_model.safetensors")
    rows = [w for k, w in weights.items() if "trainable_tokens_delta" in k]
    assert len(rows) == 1 and rows[0].shape == (2, 64)  # the two new rows, the output head tied to them
    assert not any(k.endswith(("wte.weight", "lm_head.weight")) for k in weights)  # no whole embedding matrix
    counts = re.search(r"LoRA: ([\d,]+) of ([\d,]+) parameters", log).groups()
    trained, total = (int(x.replace(",", "")) for x in counts)
    assert 0 < trained / total < 0.05, log


@pytest.mark.integration  # peft alone, in a subprocess
def test_the_lora_sft_folder_loads_in_plain_peft_with_hftools_logits(sft_lora_run):
    from test_adapters import _hftool_logits, _plain_peft_logits
    from transformers import AutoModelForCausalLM

    out, _ = sft_lora_run
    texts = [CHATML_PROMPT + "jumps<|im_end|>"]  # the new rows in and out, through the tied head
    plain = _plain_peft_logits("AutoPeftModelForCausalLM", out, texts)
    ours = _hftool_logits(AutoModelForCausalLM, out, texts)
    assert plain.shape == ours.shape and plain.shape[-1] == 402  # the vocabulary with ChatML's two tokens
    assert torch.allclose(plain, ours, atol=1e-5)


def test_an_adapter_served_by_name_beside_its_base_chats_like_its_merged_folder(sft_lora_run, tiny_gpt2, tmp_path):
    """``hftool serve -m base=BASE -m mychat=ADAPTER``: each request goes to the model its ``model`` field names."""
    from fastapi.testclient import TestClient

    from hftool.runs.serve import ServeOptions, build_all_served
    from hftool.serve.app import create_app

    out, _ = sft_lora_run
    merged = tmp_path / "merged"
    code, _, err = run_cli(["adapters", "merge", str(out), "-o", str(merged)])
    assert code == 0, err
    chat = {"messages": [{"role": "user", "content": "The quick brown fox?"}], "max_tokens": 6, "temperature": 0}

    def serve(*models):
        options = ServeOptions(models=list(models), max_batch_size=2, max_queue=4, threads=1)
        options.validate()
        return TestClient(create_app(build_all_served(options)))

    def reply(response):
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    with serve(f"base={tiny_gpt2}", f"mychat={out}") as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["base", "mychat"]
        adapter_reply = reply(client.post("/v1/chat/completions", json={**chat, "model": "mychat"}))
        base = client.post("/v1/chat/completions", json={**chat, "model": "base"})  # the base has no template
        assert base.status_code == 400 and base.json()["error"]["code"] == "no_chat_template"
        assert client.post("/v1/completions", json={"model": "base", "prompt": "The quick"}).status_code == 200
    with serve(f"mychat={merged}") as client:
        assert adapter_reply == reply(client.post("/v1/chat/completions", json={**chat, "model": "mychat"}))


def test_packing_is_refused_where_the_model_cannot_keep_conversations_apart(tiny_bloom, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", CHATS)
    code, _, err = run_cli(sft_args(tiny_bloom, train, train, tmp_path / "out", "data.packing=true"))
    assert code != 0 and "data.packing=true: bloom models cannot keep packed conversations apart" in err
    assert not (tmp_path / "out").exists()  # refused before the output folder is claimed


def test_a_missing_base_names_the_command_that_makes_it(tmp_path, monkeypatch):
    """From a fresh clone (beside ../shared), the recipe's base is missing: the hint is the exact command that
    makes it (the embedded corpus would do too; the recipe's documented run uses WikiText-2)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["finetune", "sft", "-r", "sft-gpt2-mini-squad"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and errors == [
        "error: model.name_or_path runs/gpt2-mini: no such folder; make it first: hftool pretrain -r gpt2-mini "
        "data.files=[../shared/data/corpus/wikitext-2-raw/wiki.valid.raw]"]
    assert not (tmp_path / "runs").exists()


def test_the_shared_data_sets_become_chats(shared_data):
    """The recipe's real data: every SQuAD training question, SST-2 dev sentence and CoNLL dev sentence is a chat."""
    squad = read_conversations(shared_data / "squad" / "train-v1.1-subset-44-articles.json", "--train-file", "squad")
    assert len(squad) == 11877 and all(c.messages[-1]["content"] == c.references[0] for c in squad)
    assert len(read_conversations(shared_data / "sst2" / "dev-even.tsv", "--train-file", "sst2")) == 436
    conll = read_conversations(shared_data / "conll2003" / "dev.txt", "--train-file", "conll")
    assert conll[1].messages[1:] == ({"role": "user", "content": "LONDON 1996-08-30"},
                                     {"role": "assistant", "content": "LONDON (LOC)"})


def test_a_resume_with_another_adapter_rank_is_refused_before_anything_is_written(sft_lora_run, tiny_gpt2):
    out, _ = sft_lora_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_cli([*sft_args(tiny_gpt2, out.parent / "train.jsonl", out.parent / "dev.jsonl", out, *LORA),
                            "adapter.r=4", "--resume"])
    assert code != 0 and "adapter.r: 2 -> 4" in err and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize("adapter", [[], LORA], ids=["full", "lora"])
def test_sigterm_then_resume_ends_with_the_weights_of_an_uninterrupted_run(adapter, tiny_gpt2, tmp_path,
                                                                            monkeypatch):
    """The engine's exact resume holds for sft runs (packed rows, ChatML tokens added to the embeddings), full
    or LoRA (the adapters and the trainable ChatML rows)."""
    import os
    import signal

    from safetensors.torch import load_file

    from hftool.engine import trainer

    train = write_jsonl(tmp_path / "train.jsonl", CHATS * 4)
    common = ["data.packing=true", "train.max_steps=4", "train.save_every=0", "evaluation.max_generate_examples=0",
              *adapter]
    code, _, err = run_cli([*sft_args(tiny_gpt2, train, train, tmp_path / "reference"), *common])
    assert code == 0, err

    after_step = trainer.HeapTrimmer.after_step

    def stop_after_the_second_step(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the engine's handler, acted on after this step
        after_step(self, step)

    monkeypatch.setattr(trainer.HeapTrimmer, "after_step", stop_after_the_second_step)
    stopped = tmp_path / "stopped"
    code, out, err = run_cli([*sft_args(tiny_gpt2, train, train, stopped), *common])
    assert code == 0 and "stopped by SIGTERM after step 2" in out + err
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    assert not (stopped / weights).exists()
    monkeypatch.setattr(trainer.HeapTrimmer, "after_step", after_step)
    code, _, err = run_cli([*sft_args(tiny_gpt2, train, train, stopped), *common, "--resume"])
    assert code == 0, err
    expected, resumed = load_file(tmp_path / "reference" / weights), load_file(stopped / weights)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_unpacked_batches_are_grouped_by_length_and_packed_rows_are_not(tiny_gpt2, tmp_path, monkeypatch):
    from hftool.engine import trainer

    seen = []
    fit = trainer.Engine.fit

    def recording_fit(self, model, train_data, task, **kwargs):
        seen.append((len(train_data), kwargs.get("lengths")))
        return fit(self, model, train_data, task, **kwargs)

    monkeypatch.setattr(trainer.Engine, "fit", recording_fit)
    train = write_jsonl(tmp_path / "train.jsonl", CHATS * 2)
    for packing in ("false", "true"):
        code, _, err = run_cli([*sft_args(tiny_gpt2, train, train, tmp_path / packing), f"data.packing={packing}",
                                "train.max_steps=1", "evaluation.max_generate_examples=0"])
        assert code == 0, err
    (rows, lengths), (_, packed_lengths) = seen
    items, _ = sft.encode(use_template(tiny_gpt2), read_conversations(train, "--train-file"), 64, False)
    assert lengths == [len(i["input_ids"]) for i in items] and rows == len(items)
    assert packed_lengths is None


def use_template(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    sft.use_chat_template(tok, "auto")
    return tok
