"""LoRA adapters (issue 26 item 1): a fine-tune with ``adapter.kind=lora`` writes a plain-peft adapter folder,
which loads without hftool, which every inference command reads like a model folder, which ``hftool adapters
merge`` turns into an ordinary model with the same outputs, and whose runs resume exactly from checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, run_cli, tiny_pretrain_args
from safetensors.torch import load_file

from hftool.outputs import read_manifest

SENTENCES = ["a fine film", "a dull film", "great acting and a fine story", "the plot is dull and slow",
             "fine work", "a slow dull mess", "a great cast", "dull"]
LORA = ["adapter.kind=lora", "adapter.r=4", "adapter.alpha=8"]
TRAIN = ["train.batch_size=4", "train.max_steps=6", "train.warmup_steps=0", "train.lr=5e-3", "train.log_every=1",
         "train.save_every=0", "train.mixed_precision=no", "train.report_to=none", "train.eval_batch_size=8"]


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labelled")
    rows = [f"{s}\t{'negative' if ('dull' in s or 'slow' in s) else 'positive'}" for s in SENTENCES]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows * 2) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    tags = {"fine": "B-MISC", "great": "B-MISC", "film": "B-ORG", "cast": "I-ORG"}
    blocks = ["\n".join(f"{w} {tags.get(w, 'O')}" for w in s.split()) for s in SENTENCES]
    (folder / "train.conll").write_text("\n\n".join(blocks * 2) + "\n")
    (folder / "dev.conll").write_text("\n\n".join(blocks) + "\n")
    return folder


def _finetune(command, recipe, model, data, out, extension, *extra):
    code, _, err = run_cli(["finetune", command, "-r", recipe, f"model.name_or_path={model}",
                            "--train-file", str(data / f"train.{extension}"),
                            "--validation-file", str(data / f"dev.{extension}"), f"train.output_dir={out}",
                            "data.max_length=32", *TRAIN, *LORA, *extra])
    assert code == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_bert, labelled_files):
    out = tmp_path_factory.mktemp("lora-classify") / "run"
    return _finetune("classify", "classify-sst2-minilm", tiny_bert, labelled_files, out, "tsv",
                     "data.label_names=null")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory, tiny_bert, labelled_files):
    out = tmp_path_factory.mktemp("lora-ner") / "run"
    return _finetune("ner", "ner-conll2003-minilm", tiny_bert, labelled_files, out, "conll")


def _merged(adapter, tmp_path):
    merged = tmp_path / "merged"
    code, _, err = run_cli(["adapters", "merge", str(adapter), "-o", str(merged)])
    assert code == 0, err
    return merged


def test_a_lora_run_writes_an_adapter_folder_recorded_in_the_manifest(classifier, tiny_bert):
    names = {p.name for p in classifier.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"} <= names
    assert "model.safetensors" not in names  # the base weights are not copied
    config = json.loads((classifier / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_bert.resolve())
    assert set(config["target_modules"]) == {"query", "key", "value", "dense"}
    assert "classifier" in config["modules_to_save"]
    weights = load_file(classifier / "adapter_model.safetensors")
    assert any("lora_A" in k for k in weights) and any(k.endswith("classifier.weight") for k in weights)
    manifest = read_manifest(classifier)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest.files)


PLAIN_PEFT = """
import json, sys
import torch
from peft import {auto}
from transformers import AutoTokenizer
folder, texts, extra = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model = {auto}.from_pretrained(folder, **extra).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
assert not any(name.startswith("hftool") for name in sys.modules)
def first_logits(output):  # question answering has start and end logits
    return output["logits"] if "logits" in output else output["start_logits"]
with torch.no_grad():
    print(json.dumps([first_logits(model(**tokenizer(t, return_tensors="pt")))[0].tolist() for t in texts]))
"""


def _plain_peft_logits(auto, folder, texts, **extra):
    """Logits from peft alone, in a process that cannot import hftool (it is not on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_PEFT.format(auto=auto), str(folder), json.dumps(texts),
                           json.dumps(extra)], capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
                          cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.tensor(json.loads(proc.stdout))


def _hftool_logits(auto_class, folder, texts):
    from hftool.loading import load_model, load_tokenizer, resolve_model

    ref = resolve_model(str(folder))
    model, tokenizer = load_model(auto_class, ref, str(folder), "--model").eval(), load_tokenizer(ref, "", "")
    with torch.no_grad():
        return torch.stack([model(**tokenizer(t, return_tensors="pt")).logits[0] for t in texts])


@pytest.mark.integration  # peft alone, in a subprocess
@pytest.mark.parametrize("kind", ["classify", "ner"])
def test_plain_peft_loads_the_adapter_with_hftools_logits(kind, request):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    folder = request.getfixturevalue("classifier" if kind == "classify" else "tagger")
    texts = SENTENCES[:3]
    if kind == "classify":
        plain = _plain_peft_logits("AutoPeftModelForSequenceClassification", folder, texts)
        ours = _hftool_logits(AutoModelForSequenceClassification, folder, texts)
    else:
        labels = json.loads((folder / "config.json").read_text())["id2label"]
        plain = _plain_peft_logits("AutoPeftModelForTokenClassification", folder, texts[:1], num_labels=len(labels))
        ours = _hftool_logits(AutoModelForTokenClassification, folder, texts[:1])
    assert plain.shape == ours.shape
    assert torch.allclose(plain, ours, atol=1e-5)


@pytest.mark.integration  # peft alone, in a subprocess
def test_merge_writes_a_plain_model_with_the_adapters_outputs(classifier, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = _merged(classifier, tmp_path)
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    with torch.no_grad():
        plain = torch.stack([model(**tokenizer(t, return_tensors="pt")).logits[0] for t in SENTENCES])
    adapter = _plain_peft_logits("AutoPeftModelForSequenceClassification", classifier, SENTENCES)
    assert torch.allclose(plain, adapter, atol=1e-5)
    assert set(read_manifest(merged).files) >= {"model.safetensors", "config.json"}

    code, adapter_out, err = run_cli(["classify", "-m", str(classifier), "--json", *SENTENCES])
    assert code == 0, err
    code, merged_out, err = run_cli(["classify", "-m", str(merged), "--json", *SENTENCES])
    assert code == 0, err
    assert adapter_out == merged_out


def test_tag_on_the_adapter_equals_tag_on_the_merged_folder(tagger, tmp_path):
    merged = _merged(tagger, tmp_path)
    code, adapter_out, err = run_cli(["tag", "-m", str(tagger), *SENTENCES[:4]])
    assert code == 0, err
    code, merged_out, err = run_cli(["tag", "-m", str(merged), *SENTENCES[:4]])
    assert code == 0, err
    assert adapter_out == merged_out


@pytest.mark.integration  # peft alone, in a subprocess
def test_squad_lora_answers_and_explains_like_its_merged_folder(tiny_bert, tmp_path):
    from squad_fixtures import hand_examples, write_jsonl
    from transformers import AutoModelForQuestionAnswering

    examples = hand_examples()
    data = write_jsonl(tmp_path / "squad.jsonl", examples)
    out = tmp_path / "qa"
    code, _, err = run_cli(["finetune", "squad", "-r", "squad-minilm", f"model.name_or_path={tiny_bert}",
                            "--train-file", str(data), "--validation-file", str(data), f"train.output_dir={out}",
                            "data.max_length=64", "data.doc_stride=16", *TRAIN, *LORA])
    assert code == 0, err[-3000:]
    assert "qa_outputs" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
    texts = [examples[0].question]
    plain = _plain_peft_logits("AutoPeftModelForQuestionAnswering", out, texts)[0]
    from hftool.loading import load_model, load_tokenizer, resolve_model

    ref = resolve_model(str(out))
    model, tokenizer = load_model(AutoModelForQuestionAnswering, ref, str(out), "--model"), load_tokenizer(ref, "", "")
    with torch.no_grad():
        ours = model(**tokenizer(texts[0], return_tensors="pt"))
    assert torch.allclose(plain, ours.start_logits[0], atol=1e-5)

    merged = _merged(out, tmp_path)
    ask = ["--question", examples[0].question, "--context", examples[0].context, "--max-length", "64",
           "--doc-stride", "16", "--json"]
    explain = ["explain", "attention", "-t", "the fox jumps", "--layer", "1"]
    for command in (["answer", *ask], explain):
        outputs = []
        for folder in (out, merged):
            extra = ["-o", str(tmp_path / f"{folder.name}.png")] if command is explain else []
            code, shown, err = run_cli([*command, "-m", str(folder), *extra])
            assert code == 0, err
            outputs.append(shown.replace(str(tmp_path / f"{folder.name}.png"), "PNG"))
        assert outputs[0] == outputs[1]


def test_continued_pretraining_with_lora_generates_like_its_merged_folder(tiny_gpt2, small_corpus, tmp_path):
    out = tmp_path / "lm"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out), "model.config={}",
                            f"model.init_from={tiny_gpt2}", f"tokenizer.path={tiny_gpt2}", "train.lr=1e-2", *LORA])
    assert code == 0, err[-3000:]
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    merged = _merged(out, tmp_path)
    generate = ["generate", "--prompt", "The quick brown", "--max-new-tokens", "12", "--greedy"]
    code, adapter_text, err = run_cli([*generate, "-m", str(out)])
    assert code == 0, err
    code, merged_text, err = run_cli([*generate, "-m", str(merged)])
    assert code == 0, err
    assert adapter_text == merged_text
    trained = load_file(out / "adapter_model.safetensors")
    assert all(trained[k].abs().sum() > 0 for k in trained if "lora_B" in k)  # lora_B starts at zero
    assert _served_completion(out) == _served_completion(merged)
    # the run's decoding defaults (written by pretrain) travel with the adapter into the merged folder
    assert json.loads((merged / "generation_config.json").read_text())["top_p"] == 0.95


def _served_completion(folder):
    """A greedy completion from the app ``hftool serve --model FOLDER`` builds (in process, no port)."""
    from fastapi.testclient import TestClient

    from hftool.runs.serve import ServeOptions, build_served
    from hftool.schemas.generate import GenerateRecipe, ModelSettings
    from hftool.serve.app import create_app

    options = ServeOptions(recipe=GenerateRecipe(model=ModelSettings(name=str(folder))), max_batch_size=2,
                           max_queue=2, threads=1)
    options.validate()
    with TestClient(create_app(build_served(options))) as client:
        response = client.post("/v1/completions", json={"prompt": "The quick brown", "max_tokens": 8,
                                                        "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


class _StopAfter:
    """Stand-in for the engine's stop signals: a SIGTERM arrives after ``steps`` optimizer steps."""

    steps = 3

    def __init__(self):
        self.checks = 0
        self.name = "SIGTERM"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def received(self):
        self.checks += 1
        return 15 if self.checks >= self.steps else None


def test_a_stopped_lora_run_resumes_to_the_uninterrupted_weights(tiny_bert, labelled_files, tmp_path,
                                                                  monkeypatch):
    reference = _finetune("classify", "classify-sst2-minilm", tiny_bert, labelled_files, tmp_path / "reference",
                          "tsv", "data.label_names=null", "adapter.dropout=0.1")
    import hftool.engine.trainer as trainer

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "StopSignals", _StopAfter)
        stopped = _finetune("classify", "classify-sst2-minilm", tiny_bert, labelled_files, tmp_path / "stopped",
                            "tsv", "data.label_names=null", "adapter.dropout=0.1")
    assert not (stopped / "adapter_model.safetensors").exists()
    (checkpoint,) = (stopped / "checkpoints").iterdir()
    saved = load_file(checkpoint / "model.safetensors")  # the trained weights only, not the frozen base
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)
    _finetune("classify", "classify-sst2-minilm", tiny_bert, labelled_files, stopped, "tsv",
              "data.label_names=null", "adapter.dropout=0.1", "--resume")
    expected = load_file(reference / "adapter_model.safetensors")
    resumed = load_file(stopped / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_a_resume_with_another_adapter_is_refused(classifier, tiny_bert, labelled_files):
    code, _, err = run_cli(["finetune", "classify", "-r", "classify-sst2-minilm", f"model.name_or_path={tiny_bert}",
                            "--train-file", str(labelled_files / "train.tsv"), f"train.output_dir={classifier}",
                            "data.max_length=32", *TRAIN, *LORA, "data.label_names=null", "adapter.r=2",
                            "--resume"])
    assert code != 0 and "adapter.r: 4 -> 2" in err and "Traceback" not in err


# make test holds the two halves faster: two processes equal one for full runs (test_distributed) and a LoRA
# run's weights and resume in one process (above); the two together run in make test-slow.
@pytest.mark.integration
@pytest.mark.slow
def test_two_process_lora_equals_one_process_with_the_whole_batch(tiny_bert, labelled_files, tmp_path):
    """Data parallelism holds for adapter runs: 2 processes of 2 examples train the adapter 1 process of 4 does."""
    from transformers import AutoTokenizer, BertForPreTraining

    model = BertForPreTraining.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "bert")
    common = ["finetune", "classify", "-r", "classify-sst2-minilm", f"model.name_or_path={tmp_path / 'bert'}",
              "--train-file", str(labelled_files / "train.tsv"), "--validation-file", str(labelled_files / "dev.tsv"),
              "data.max_length=32", "data.label_names=null", *TRAIN, *LORA, "adapter.dropout=0", "train.max_steps=3",
              "train.adam_eps=1e-6"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    two = subprocess.run([sys.executable, "-m", "hftool", *common, f"train.output_dir={tmp_path / 'two'}",
                          "train.batch_size=2", "--num-processes", "2"], capture_output=True, text=True, env=env,
                         timeout=300, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    threads = torch.get_num_threads()  # one thread, as each of the two processes: the same products' bits
    torch.set_num_threads(1)
    try:
        code, _, err = run_cli([*common, f"train.output_dir={tmp_path / 'one'}", "train.batch_size=4"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    one, two = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        # The two runs sum the gradients in another order: at Adam's default eps the largest gap measured was
        # 3e-7 (eps raised as in test_distributed, so a near-zero gradient's noise cannot become an lr-sized
        # step); a wrong split of the batch moves weights by about lr (5e-3).
        assert torch.allclose(one[name], two[name], atol=1e-6), (name, (one[name] - two[name]).abs().max())


@pytest.mark.parametrize("decoder", ["tiny_gpt2", "tiny_bloom"])
def test_a_decoder_classifier_with_lora_classifies_like_its_merged_folder(decoder, request, labelled_files,
                                                                          tmp_path):
    """GPT-2 and BLOOM as classifiers (their head is ``score``; GPT-2's layers are Conv1D), as the
    classify-sst2-bloom-560m-lora recipe trains BLOOM."""
    out = _finetune("classify", "classify-sst2-minilm", request.getfixturevalue(decoder), labelled_files,
                    tmp_path / "run", "tsv", "data.label_names=null")
    config = json.loads((out / "adapter_config.json").read_text())
    expected = {"tiny_gpt2": {"c_attn", "c_proj", "c_fc"},
                "tiny_bloom": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}}[decoder]
    assert set(config["target_modules"]) == expected and "score" in config["modules_to_save"]
    merged = _merged(out, tmp_path)
    shown = []
    for folder in (out, merged):
        code, text, err = run_cli(["classify", "-m", str(folder), "--json", *SENTENCES])
        assert code == 0, err
        shown.append(text)
    assert shown[0] == shown[1]


def test_a_target_layer_the_model_lacks_is_named(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    from hftool.adapters import apply_adapter
    from hftool.errors import HftoolError
    from hftool.schemas.adapter import AdapterSettings

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    with pytest.raises(HftoolError, match="no layer named query; its layers include .*c_attn"):
        apply_adapter(model, AdapterSettings(kind="lora", target_modules=["c_attn", "query"]), "causal-lm")
    wrapped = apply_adapter(model, AdapterSettings(kind="lora", target_modules=["mlp.c_proj"]), "causal-lm")
    adapted = {name for name, _ in wrapped.named_modules() if name.endswith("lora_A")}
    assert adapted and all(".mlp.c_proj." in name for name in adapted)  # a dotted path picks the MLP's c_proj only


def test_adapter_weights_that_fit_no_layer_of_the_base_are_refused(classifier, tmp_path):
    """An adapter trained on another base (its layer names differ) would silently leave the base unchanged."""
    import shutil

    from safetensors.torch import save_file

    other = tmp_path / "other"
    shutil.copytree(classifier, other)
    weights = load_file(other / "adapter_model.safetensors")
    save_file({k.replace(".query.", ".q_proj."): v for k, v in weights.items()}, other / "adapter_model.safetensors")
    code, _, err = run_cli(["classify", "-m", str(other), "a fine film"])
    assert code != 0 and "adapter weight(s) fit no layer of the base model" in err and "Traceback" not in err
