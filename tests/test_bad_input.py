"""Every command, fed bad input, ends in one ``error:`` line naming the problem: non-zero exit, no traceback.

The table is the contract for new commands: add a row (command line + what the error must mention). Rows
use placeholders filled from the ``inputs`` fixture: ``{gpt2}``, ``{minilm}``, ``{tmp}`` and the bad files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_cli
from squad_fixtures import hand_examples, write_jsonl

QA_WINDOW = ["--max-length", "64", "--doc-stride", "16"]  # the tiny GPT-2 has 128 positions
PRETRAIN = ["pretrain", "data.block_size=32", "tokenizer.vocab_size=400", "train.max_steps=2",
            "train.report_to=none", "train.mixed_precision=no",
            "model.config={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}"]

CLASSIFY = ["finetune", "classify", "-r", "classify-sst2-minilm", "train.report_to=none"]
NER = ["finetune", "ner", "-r", "ner-conll2003-minilm", "train.report_to=none"]
SFT = ["finetune", "sft", "-r", "sft-gpt2-mini-squad", "model.name_or_path={gpt2}", "data.format=auto",
       "data.max_length=64", "data.validation_file=", "train.report_to=none", "train.output_dir={tmp}/run"]

# (id, command line, text the error line must contain)
CASES = [
    # model folders that cannot be loaded, or lack the head the command needs
    ("generate-pickle-only", ["generate", "-m", "{pickle_only}", "-p", "hi", "-n", "2"],
     "only pickle weights (pytorch_model.bin)"),
    ("generate-truncated", ["generate", "-m", "{truncated}", "-p", "hi", "-n", "2"], "cannot load"),
    ("generate-bad-config", ["generate", "-m", "{bad_config}", "-p", "hi", "-n", "2"], "bad-config"),
    ("answer-truncated", ["answer", "-m", "{truncated}", "-q", "Who?", "-c", "Bob did.", *QA_WINDOW], "cannot load"),
    ("answer-pickle-only", ["answer", "-m", "{pickle_only}", "-q", "Who?", "-c", "Bob did."], "pickle-only"),
    ("explain-truncated", ["explain", "next-token", "-m", "{truncated}", "-t", "hi", "-o", "{tmp}/x.png"],
     "cannot load"),
    ("answer-gpt2-no-qa-head", ["answer", "-m", "{gpt2}", "-q", "Who?", "-c", "Bob did.", *QA_WINDOW],
     "question-answering head"),
    ("answer-minilm-no-qa-head", ["answer", "-m", "{minilm}", "-q", "Who?", "-c", "Bob did."],
     "BertModel checkpoint has no trained question-answering head"),
    ("evaluate-gpt2-no-qa-head", ["evaluate", "squad", "-m", "{gpt2}", "-f", "{squad}", "-o", "{tmp}/ev", *QA_WINDOW],
     "GPT2LMHeadModel checkpoint has no trained question-answering head"),
    ("evaluate-minilm-no-qa-head", ["evaluate", "squad", "-m", "{minilm}", "-f", "{squad}", "-o", "{tmp}/ev"],
     "BertModel checkpoint has no trained question-answering head"),
    # data files
    ("pretrain-jsonl-not-string", [*PRETRAIN, "data.files=[{text_int}]", "train.output_dir={tmp}/run"],
     "text_int.jsonl:2: field 'text' is int"),
    ("pretrain-jsonl-malformed", [*PRETRAIN, "data.files=[{bad_line}]", "train.output_dir={tmp}/run"],
     "bad_line.jsonl:3: not valid JSON"),
    ("tokenizer-jsonl-malformed", ["tokenizer", "train", "{bad_line}", "-o", "{tmp}/tok"],
     "bad_line.jsonl:3"),
    # tokenizer train names its own arguments and flags, pretrain its recipe keys
    ("tokenizer-missing-file", ["tokenizer", "train", "{tmp}/absent.txt", "-o", "{tmp}/tok"],
     "absent.txt: no such file; check the FILES arguments"),
    ("tokenizer-jsonl-no-text-column", ["tokenizer", "train", "{text_int}", "--text-column", "body", "-o", "{tmp}/tok"],
     "text_int.jsonl:1: no column 'body' (fields: text); set --text-column"),
    ("tokenizer-files-and-hub", ["tokenizer", "train", "{text_int}", "--hub-dataset", "wikitext", "-o", "{tmp}/tok"],
     "--hub-dataset wikitext and FILES"),
    ("pretrain-jsonl-no-text-column", [*PRETRAIN, "data.files=[{text_int}]", "data.text_column=body",
                                       "train.output_dir={tmp}/run"], "set data.text_column"),
    # finetune classify / ner, evaluate classify / ner, classify, tag
    ("finetune-classify-missing-column", [*CLASSIFY, "--train-file", "{no_label_tsv}", "train.output_dir={tmp}/run"],
     "no_label.tsv:2: no column 'label'"),
    ("finetune-classify-empty-file", [*CLASSIFY, "--train-file", "{empty_tsv}", "train.output_dir={tmp}/run"],
     "no examples found"),
    ("finetune-ner-token-without-tag", [*NER, "--train-file", "{conll_no_tag}", "train.output_dir={tmp}/run"],
     "conll_no_tag.txt:2: token 'rejects' has no tag"),
    ("finetune-ner-not-iob", [*NER, "--train-file", "{conll_not_iob}", "train.output_dir={tmp}/run"],
     "conll_not_iob.txt:1: tag 'ORGANISATION' is not IOB"),
    ("evaluate-classify-minilm-no-head", ["evaluate", "classify", "-m", "{minilm}", "-f", "{ok_tsv}",
                                          "-o", "{tmp}/ev"],
     "BertModel checkpoint has no trained sequence-classification head"),
    ("evaluate-ner-minilm-no-head", ["evaluate", "ner", "-m", "{minilm}", "-f", "{conll_ok}", "-o", "{tmp}/ev"],
     "BertModel checkpoint has no trained token-classification head"),
    ("classify-minilm-no-head", ["classify", "-m", "{minilm}", "a fine film"],
     "no trained sequence-classification head"),
    ("tag-minilm-no-head", ["tag", "-m", "{minilm}", "Peter lives in Paris"], "no trained token-classification head"),
    ("classify-output-exists", ["classify", "-m", "{minilm}", "hi", "-o", "{a_file}"], "already exists"),
    ("tag-empty-input", ["tag", "-m", "{minilm}", "--input", "{empty_txt}"], "no texts found"),
    # output paths
    ("pretrain-output-is-file", [*PRETRAIN, "train.output_dir={a_file}"], "is an existing file"),
    ("pretrain-output-is-cwd", [*PRETRAIN, "train.output_dir=."], "current directory"),
    ("pretrain-output-is-home", [*PRETRAIN, "train.output_dir={home}"], "home or root"),
    ("pretrain-output-is-root", [*PRETRAIN, "train.output_dir=/"], "current directory"),
    ("tokenizer-output-is-file", ["tokenizer", "train", "-o", "{a_file}"], "is an existing file"),
    ("evaluate-output-is-file", ["evaluate", "squad", "-m", "{gpt2}", "-f", "{squad}", "-o", "{a_file}"],
     "is an existing file"),
    ("generate-output-exists", ["generate", "-m", "{gpt2}", "-p", "hi", "-n", "2", "-o", "{a_file}"],
     "already exists"),
    ("explain-output-exists", ["explain", "next-token", "-m", "{gpt2}", "-t", "hi", "-o", "{a_png}"],
     "already exists"),
    # numbers that are not numbers
    ("generate-temperature-nan", ["generate", "-m", "{gpt2}", "-p", "hi", "--sample", "--temperature", "nan"],
     "--temperature nan: must be a finite number"),
    ("generate-repetition-penalty-nan", ["generate", "-m", "{gpt2}", "-p", "hi", "--repetition-penalty", "nan"],
     "--repetition-penalty nan: must be a finite number"),
    # issue 24, serve/generate part: every decoding setting is bounded by its one declaration
    ("generate-seed-negative", ["generate", "-m", "{gpt2}", "-p", "hi", "--sample", "--seed", "-1"],
     "--seed -1: must be 0 to 4294967295"),
    ("generate-seed-2-32", ["generate", "-m", "{gpt2}", "-p", "hi", "--sample", "--seed", "4294967296"],
     "--seed 4294967296: must be 0 to 4294967295"),
    ("generate-num-beams-huge", ["generate", "-m", "{gpt2}", "-p", "hi", "--num-beams", "100000"],
     "--num-beams 100000: must be 1 to 64"),
    ("generate-temperature-tiny", ["generate", "-m", "{gpt2}", "-p", "hi", "--sample", "--temperature", "1e-300"],
     "--temperature 1e-300: must be at least 0.01"),
    ("generate-repetition-penalty-tiny", ["generate", "-m", "{gpt2}", "-p", "hi", "--repetition-penalty", "1e-300"],
     "--repetition-penalty 1e-300: must be at least 0.01"),
    ("generate-num-return-sequences-huge", ["generate", "-m", "{gpt2}", "-p", "hi", "--sample",
                                            "--num-return-sequences", "100000"], "--num-return-sequences 100000"),
    ("generate-seed-in-recipe", ["generate", "-m", "{gpt2}", "-p", "hi", "decoding.seed=-5"], "--seed -5"),
    # issue 27, continuous batching: the scheduler's limits are checked before the model loads
    ("serve-max-cache-tokens-zero", ["serve", "-m", "{gpt2}", "--max-cache-tokens", "0"],
     "--max-cache-tokens=0 must be at least 1"),
    ("serve-prefill-chunk-zero", ["serve", "-m", "{gpt2}", "--prefill-chunk", "0"],
     "--prefill-chunk=0 must be at least 1"),
    ("translate-encoder", ["translate", "-m", "{minilm}", "hello"], "translate needs a decoder"),
    ("summarize-encoder", ["summarize", "-m", "{minilm}", "-i", "{a_file}"], "summarize needs a decoder"),
    ("pretrain-lr-nan", [*PRETRAIN, "train.lr=.nan", "train.output_dir={tmp}/run"], "train.lr=nan"),
    ("pretrain-lr-inf", [*PRETRAIN, "train.lr=.inf", "train.output_dir={tmp}/run"], "must be a finite number"),
    # issue 24, output folders: below a file, ~ is the home directory, user files are no earlier run, inputs
    ("pretrain-output-below-file", [*PRETRAIN, "train.output_dir={a_file}/sub"], "a-file.txt is a file, not a folder"),
    ("pretrain-output-tilde", [*PRETRAIN, "train.output_dir=~"], "home or root"),
    ("pretrain-output-holds-user-files", [*PRETRAIN, "train.output_dir={root}/user-folder"],
     "already holds files hftool did not write (notes.txt)"),
    ("tokenizer-output-is-a-model", ["tokenizer", "train", "-o", "{gpt2}", "--overwrite"], "holds a model"),
    ("evaluate-classify-output-is-model", ["evaluate", "classify", "-m", "{gpt2}", "-f", "{ok_tsv}", "-o", "{gpt2}",
                                           "--overwrite"], "is --model"),
    ("evaluate-ner-output-holds-file", ["evaluate", "ner", "-m", "{gpt2}", "-f", "{conll_ok}", "-o", "{root}",
                                        "--overwrite"], "holds --file"),
    # issue 24: input checks
    ("classify-batch-size-0", ["classify", "-m", "{minilm}", "--batch-size", "0", "hi"],
     "--batch-size=0 must be at least 1"),
    ("answer-batch-size-0", ["answer", "-m", "{gpt2}", "-q", "Who?", "-c", "Bob did.", "--batch-size", "0"],
     "--batch-size=0 must be at least 1"),
    ("evaluate-classify-max-examples-negative", ["evaluate", "classify", "-m", "{minilm}", "-f", "{ok_tsv}",
                                                 "-o", "{tmp}/ev", "--max-examples", "-1"],
     "--max-examples=-1 must be at least 1"),
    ("classify-max-length-0", ["classify", "-m", "{minilm}", "--max-length", "0", "hi"],
     "--max-length=0 must be at least 2"),
    ("tag-max-length-0", ["tag", "-m", "{minilm}", "--max-length", "0", "hi"], "--max-length=0 must be at least 4"),
    ("tokenizer-vocab-size-0", ["tokenizer", "train", "-o", "{tmp}/tok", "--vocab-size", "0"],
     "--vocab-size=0 must be at least 1"),
    ("tokenizer-vocab-size-below-bytes", ["tokenizer", "train", "-o", "{tmp}/tok", "--vocab-size", "100"],
     "--vocab-size=100 is below the 256 bytes"),
    ("tag-sequence-classification-head", ["tag", "-m", "{seq_cls}", "Angela Merkel visited Paris."],
     "BertForSequenceClassification checkpoint has no trained token-classification head"),
    ("evaluate-ner-sequence-classification-head", ["evaluate", "ner", "-m", "{seq_cls}", "-f", "{conll_ok}",
                                                   "-o", "{tmp}/ev"],
     "BertForSequenceClassification checkpoint has no trained token-classification head"),
    ("classify-token-classification-head", ["classify", "-m", "{tok_cls}", "a fine film"],
     "BertForTokenClassification checkpoint has no trained sequence-classification head"),
    ("answer-sequence-classification-head", ["answer", "-m", "{seq_cls}", "-q", "Who?", "-c", "Bob did.", *QA_WINDOW],
     "BertForSequenceClassification checkpoint has no trained question-answering head"),
    ("answer-token-classification-head", ["answer", "-m", "{tok_cls}", "-q", "Who?", "-c", "Bob did.", *QA_WINDOW],
     "BertForTokenClassification checkpoint has no trained question-answering head"),
    ("tokenizer-corpus-dev-zero", ["tokenizer", "train", "/dev/zero", "-o", "{tmp}/tok"],
     "/dev/zero: holds NUL bytes at byte 0: not a text file"),
    ("pretrain-corpus-dev-zero", [*PRETRAIN, "data.files=[/dev/zero]", "train.output_dir={tmp}/run"],
     "/dev/zero: holds NUL bytes at byte 0"),
    ("classify-input-dev-zero", ["classify", "-m", "{minilm}", "--input", "/dev/zero"],
     "--input /dev/zero: holds NUL bytes"),
    ("evaluate-ner-file-dev-zero", ["evaluate", "ner", "-m", "{minilm}", "-f", "/dev/zero", "-o", "{tmp}/ev"],
     "--file /dev/zero: holds NUL bytes"),
    # issue 27 item 2, serve endpoints: several models, each named apart, each checked before any loads
    ("serve-two-models-one-name", ["serve", "-m", "m={gpt2}", "-m", "m={minilm}"],
     "--model: two models are named 'm'; name them apart with --model NAME=PATH"),
    ("serve-second-model-missing", ["serve", "-m", "{gpt2}", "-m", "{tmp}/no-such-model"], "no-such-model"),
    # issue 24 (evaluate's flags, bounded prompt files): a command without a recipe names the flag the user typed,
    # finetune names the recipe key; every prompt, article, sentence, pairs and reference file is bounded.
    ("evaluate-classify-missing-label-column", ["evaluate", "classify", "-m", "{seq_cls}", "-f", "{no_label_tsv}",
                                                "-o", "{tmp}/ev"],
     "no_label.tsv:2: no column 'label' (columns: sentence, stars); pass --label-column"),
    ("evaluate-classify-missing-text-column", ["evaluate", "classify", "-m", "{seq_cls}", "-f", "{ok_tsv}",
                                               "-o", "{tmp}/ev", "--text-column", "review"],
     "ok.tsv:2: no column 'review' (columns: sentence, label); pass --text-column"),
    ("evaluate-classify-missing-pair-column", ["evaluate", "classify", "-m", "{seq_cls}", "-f", "{ok_tsv}",
                                               "-o", "{tmp}/ev", "--text-pair-column", "hypothesis"],
     "ok.tsv:2: no column 'hypothesis' (columns: sentence, label); pass --text-pair-column"),
    ("finetune-classify-missing-column-recipe-key", [*CLASSIFY, "--train-file", "{no_label_tsv}",
                                                     "train.output_dir={tmp}/run"],
     "no_label.tsv:2: no column 'label' (columns: sentence, stars); set data.label_column"),
    ("classify-input-missing-text-column", ["classify", "-m", "{seq_cls}", "--input", "{no_label_tsv}"],
     "no_label.tsv:2: no column 'text' (columns: sentence, stars); pass --text-column"),
    ("evaluate-ner-iob1", ["evaluate", "ner", "-m", "{tok_cls}", "-f", "{conll_iob1}", "-o", "{tmp}/ev"],
     "this is IOB1, not IOB2; pass --tag-scheme iob1 to convert it"),
    ("finetune-ner-iob1-recipe-key", [*NER, "--train-file", "{conll_iob1}", "train.output_dir={tmp}/run"],
     "this is IOB1, not IOB2; pass data.tag_scheme=iob1 to convert it"),
    ("generate-input-dev-zero", ["generate", "-m", "{gpt2}", "--input", "/dev/zero"],
     "--input /dev/zero: holds NUL bytes at byte 0: not a text file"),
    ("generate-input-jsonl-nul", ["generate", "-m", "{gpt2}", "--input", "{nul_jsonl}"],
     "nul.jsonl: holds NUL bytes at byte 17"),
    ("summarize-input-dev-zero", ["summarize", "-m", "{gpt2}", "--input", "/dev/zero"],
     "--input /dev/zero: holds NUL bytes at byte 0"),
    ("summarize-reference-nul", ["summarize", "-m", "{gpt2}", "--input", "{a_file}", "--reference", "{nul_txt}"],
     "nul.txt: holds NUL bytes at byte 5"),
    ("translate-input-dev-zero", ["translate", "-m", "{gpt2}", "--input", "/dev/zero"],
     "--input /dev/zero: holds NUL bytes at byte 0"),
    ("translate-pairs-dev-zero", ["translate", "-m", "{gpt2}", "--pairs", "/dev/zero", "Good morning."],
     "--pairs /dev/zero: holds NUL bytes at byte 0"),
    ("recipe-file-nul", ["generate", "-r", "{nul_yaml}", "-p", "hi"], "nul.yaml: holds NUL bytes at byte 8"),
    # LoRA adapters (issue 26 item 1): the recipe section, adapter folders whose base model is gone, merge
    ("finetune-classify-lora-r-0", [*CLASSIFY, "adapter.kind=lora", "adapter.r=0", "train.output_dir={tmp}/run"],
     "adapter.r=0 must be at least 1"),
    ("finetune-classify-lora-dropout-1", [*CLASSIFY, "adapter.kind=lora", "adapter.dropout=1",
                                          "train.output_dir={tmp}/run"], "adapter.dropout=1.0 must be in [0, 1)"),
    ("pretrain-lora-fresh-model", [*PRETRAIN, "adapter.kind=lora", "train.output_dir={tmp}/run"],
     "adapts a pretrained causal LM: set objective=causal-lm and model.init_from"),
    ("pretrain-lora-resized-embeddings", [*PRETRAIN, "adapter.kind=lora", "model.init_from={gpt2}", "model.config={}",
                                          "tokenizer.resize_embeddings=true", "train.output_dir={tmp}/run"],
     "tokenizer.resize_embeddings=true adds embedding rows that adapter.kind=lora would never train"),
    ("classify-adapter-base-missing", ["classify", "-m", "{lost_base}", "a fine film"],
     "the adapter's base model is missing: adapter_config.json base_model_name_or_path /nowhere/base: no such"),
    ("adapters-merge-base-missing", ["adapters", "merge", "{lost_base}", "-o", "{tmp}/merged"],
     "the adapter's base model is missing"),
    ("adapters-merge-not-an-adapter", ["adapters", "merge", "{gpt2}", "-o", "{tmp}/merged"],
     "no adapter_config.json there"),
    # issue 25, schemas part: a flag's bound comes from its schema field and is held while parsing
    ("serve-max-queue-0", ["serve", "-m", "{gpt2}", "--max-queue", "0"], "--max-queue=0 must be at least 1"),
    ("serve-port-too-large", ["serve", "-m", "{gpt2}", "--port", "70000"], "--port=70000 must be from 0 to 65535"),
    ("tokenizer-kind-unknown", ["tokenizer", "train", "--kind", "unigram", "-o", "{tmp}/tok"],
     "--kind=unigram is not one of: byte-bpe, wordpiece"),
    ("summarize-sentences-0", ["summarize", "-m", "{gpt2}", "-i", "{a_file}", "--sentences", "0"],
     "--sentences=0 must be at least 1"),
    # issue 26, finetune sft: bad chat records, bad settings, a missing base model
    ("finetune-sft-not-json", [*SFT, "--train-file", "{chat_bad_json}"], "chat_bad_json.jsonl:2: not valid JSON"),
    ("finetune-sft-unknown-layout", [*SFT, "--train-file", "{text_int}"],
     "text_int.jsonl:1: unknown record layout (keys: text)"),
    ("finetune-sft-no-assistant", [*SFT, "--train-file", "{chat_no_assistant}"],
     "chat_no_assistant.jsonl:1: no 'assistant' message"),
    ("finetune-sft-bad-role", [*SFT, "--train-file", "{chat_bad_role}"],
     "chat_bad_role.jsonl:2: messages[1]: role 'bot' is not one of: system, user, assistant"),
    ("finetune-sft-dev-zero", [*SFT, "--train-file", "/dev/zero"], "--train-file /dev/zero: holds NUL bytes"),
    ("finetune-sft-squad-format-on-chats", [*SFT, "--train-file", "{chat_ok}", "data.format=squad"],
     "chat_ok.jsonl:1: missing field 'id'"),
    ("finetune-sft-longer-than-model", [*SFT, "--train-file", "{chat_ok}", "data.max_length=1024"],
     "data.max_length=1024 is longer than the 128 positions"),
    ("finetune-sft-missing-base", [*SFT, "--train-file", "{chat_ok}", "model.name_or_path={tmp}/runs/gpt2-mini"],
     "/runs/gpt2-mini: no such folder; make it first: hftool pretrain -r gpt2-mini "
     "data.files=[../shared/data/corpus/wikitext-2-raw/wiki.valid.raw]"),
    ("finetune-sft-no-train-file", [*SFT, "data.train_file="], "no training data: pass --train-file"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_gpt2, tiny_bert, minilm) -> dict[str, str]:
    """The bad inputs the table refers to, built once."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("bad-input")
    pickle_only = root / "pickle-only"
    shutil.copytree(tiny_gpt2, pickle_only)
    torch.save(load_file(str(pickle_only / "model.safetensors")), pickle_only / "pytorch_model.bin")
    (pickle_only / "model.safetensors").unlink()
    truncated = root / "truncated"
    shutil.copytree(tiny_gpt2, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_config = root / "bad-config"
    shutil.copytree(tiny_gpt2, bad_config)
    (bad_config / "config.json").write_text("{not json")
    text_int = root / "text_int.jsonl"
    text_int.write_text('{"text": "fine"}\n{"text": 5}\n')
    bad_line = root / "bad_line.jsonl"
    bad_line.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "thr\n')
    a_file = root / "a-file.txt"
    a_file.write_text("a user's file\n")
    (root / "user-folder").mkdir()
    (root / "user-folder" / "notes.txt").write_text("a user's notes\n")
    a_png = root / "mine.png"
    a_png.write_bytes(b"not really a png")
    squad = write_jsonl(root / "squad.jsonl", hand_examples())
    heads = _labelling_heads(tiny_bert, root)
    files = {"no_label_tsv": ("no_label.tsv", "sentence\tstars\ngood\t5\n"), "empty_tsv": ("empty.tsv", ""),
             "ok_tsv": ("ok.tsv", "sentence\tlabel\ngood\t1\n"),
             "empty_txt": ("empty.txt", "\n"), "conll_no_tag": ("conll_no_tag.txt", "EU B-ORG\nrejects\n"),
             "conll_not_iob": ("conll_not_iob.txt", "EU ORGANISATION\n"), "conll_ok": ("conll_ok.txt", "EU B-ORG\n"),
             "conll_iob1": ("conll_iob1.txt", "EU I-ORG\nrejects O\nPeter I-PER\n"),
             "nul_txt": ("nul.txt", "hello\0world\n"), "nul_jsonl": ("nul.jsonl", '{"prompt": "hi"}\n\0\n'),
             "nul_yaml": ("nul.yaml", "command:\0\n"),
             "chat_ok": ("chat_ok.jsonl", '{"prompt": "hi", "completion": "hello"}\n'),
             "chat_bad_json": ("chat_bad_json.jsonl", '{"prompt": "hi", "completion": "hello"}\n{"prompt": "h\n'),
             "chat_no_assistant": ("chat_no_assistant.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n'),
             "chat_bad_role": ("chat_bad_role.jsonl", '{"prompt": "hi", "completion": "hello"}\n'
                               '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n')}
    for name, text in files.values():
        (root / name).write_text(text)
    return {"gpt2": str(tiny_gpt2), "minilm": str(minilm), "pickle_only": str(pickle_only),
            "truncated": str(truncated), "bad_config": str(bad_config), "text_int": str(text_int),
            "bad_line": str(bad_line), "a_file": str(a_file), "a_png": str(a_png), "squad": str(squad),
            "root": str(root), "home": str(Path.home()), **heads,
            **{key: str(root / name) for key, (name, _) in files.items()}}


def _labelling_heads(tiny_bert: Path, root: Path) -> dict[str, str]:
    """Tiny BERT folders saved with a sequence- and a token-classification head (labels as finetune saves them):
    both heads are named ``classifier``, so only the saved architecture tells them apart."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification, BertForTokenClassification

    labels = {0: "negative", 1: "positive"}
    config = AutoConfig.from_pretrained(tiny_bert, id2label=labels, label2id={v: k for k, v in labels.items()})
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    folders = {}
    for key, cls in (("seq_cls", BertForSequenceClassification), ("tok_cls", BertForTokenClassification)):
        cls(config).save_pretrained(root / key)
        tokenizer.save_pretrained(root / key)
        folders[key] = str(root / key)
    lost_base = root / "lost-base"  # an adapter folder whose base model was moved away
    shutil.copytree(root / "seq_cls", lost_base)
    (lost_base / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/base",
                                                               "peft_type": "LORA", "task_type": "SEQ_CLS"}))
    folders["lost_base"] = str(lost_base)
    return folders


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


@pytest.mark.parametrize(("args", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_error_line(args, expected, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filled = [_fill(arg, {"tmp": str(tmp_path), **inputs}) for arg in args]
    before = {p: p.read_bytes() for p in (Path(inputs["a_file"]), Path(inputs["a_png"]))}
    code, out, err = run_cli(filled)
    assert code != 0, f"exit 0 for {filled}: {out[-500:]}"
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert expected in errors[0], errors[0]
    assert {p: p.read_bytes() for p in before} == before  # the user's files are untouched


def test_table_covers_every_command_that_loads_or_writes():
    """A new command that loads a model or writes output gets a row (or this list is updated on purpose)."""
    covered = {case[1][0] if case[1][0] not in ("evaluate", "explain", "tokenizer", "finetune")
               else " ".join(case[1][:2]) for case in CASES}
    assert {"generate", "answer", "pretrain", "evaluate squad", "explain next-token", "tokenizer train",
            "finetune classify", "finetune ner", "finetune sft", "evaluate classify", "evaluate ner", "classify",
            "tag"} <= covered


def test_jsonl_empty_records_are_counted(tmp_path):
    from hftool.data.text import read_jsonl_texts

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["a", "", "  ", None, "b"]) + "\n")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert list(read_jsonl_texts(path, "text")) == ["a", "b"]
    assert "skipped 3 record(s) with empty 'text'" in err.getvalue()


def test_evaluate_names_no_recipe_key(inputs, tmp_path):
    """evaluate has no recipe: a label the model does not know asks to fix the file, not to set data.label_names."""
    scored = tmp_path / "maybe.tsv"
    scored.write_text("sentence\tlabel\ngood\tmaybe\n")
    code, _, err = run_cli(["evaluate", "classify", "-m", inputs["seq_cls"], "-f", str(scored), "-o",
                            str(tmp_path / "ev")])
    assert code != 0
    assert err.strip().splitlines() == [f"error: {scored}:2: label 'maybe' is not one the model was trained on "
                                        f"(negative, positive); fix {scored}"]


def test_a_prompt_on_stdin_is_bounded(inputs, monkeypatch):
    """``generate -p - < /dev/zero`` ends in one line at the first NUL byte, not in reading forever."""
    with open("/dev/zero") as zero:
        monkeypatch.setattr("sys.stdin", zero)
        code, _, err = run_cli(["generate", "-m", inputs["gpt2"], "-p", "-"])
    assert code != 0
    assert err.strip().splitlines() == ["error: --prompt -: holds NUL bytes at byte 0: not a text file (binary data, "
                                        "or a device such as /dev/zero)"]
