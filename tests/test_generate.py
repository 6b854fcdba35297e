"""hftool generate / summarize / translate on tiny local models: same tokens as transformers, batching,
streaming, seeds, stop strings, JSONL, scoring, and every bad input rejected in one line before loading."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import SAMPLE_TEXT, hftool_cli, run_cli

from hftool.errors import HftoolError
from hftool.generation.batching import run_prompts
from hftool.generation.decoding import Generator
from hftool.generation.loading import load_for_generation
from hftool.generation.metrics import bleu_chrf, rouge
from hftool.runs.generate import run_generate, run_summarize, run_translate
from hftool.schemas.generate import DecodingSettings, GenerateRecipe, ModelSettings

PROMPTS = [
    "The quick brown fox",
    "Attention lets every token look at every other token. Language models predict the next word.",
    "A robot",
    "Transformers read whole sentences at once.",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than two on a machine shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return load_for_generation(ModelSettings(name=str(tiny_gpt2)))


@pytest.fixture(scope="module")
def bloom(tiny_bloom):
    return load_for_generation(ModelSettings(name=str(tiny_bloom)))


@pytest.fixture(scope="session")
def pretrained_folder(tmp_path_factory, tiny_gpt2):
    """A model folder written by 'hftool pretrain' (1 layer, 5 steps, the fixture tokenizer, tiny corpus)."""
    root = tmp_path_factory.mktemp("pretrained")
    corpus = root / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT, encoding="utf-8")
    out = root / "run"
    done = hftool_cli(
        "pretrain",
        "train.max_steps=5",
        f"train.output_dir={out}",
        "model.config.n_layer=1",
        "model.config.n_embd=64",
        "model.config.n_head=2",
        "train.eval_every=0",
        "train.save_every=0",
        f"tokenizer.path={tiny_gpt2}",
        f"data.files=[{corpus}]",
        "data.block_size=32",
        "train.batch_size=4",
        HFTOOL_CACHE=str(root / "cache"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def reference_greedy(model, ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """Plain transformers: model.generate on one unpadded prompt."""
    with torch.no_grad():
        input_ids = torch.tensor([ids])
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_greedy_equals_model_generate_alone_and_in_batches(name, request):
    model, tokenizer = request.getfixturevalue(name)
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=24))
    assert generator.uses_fast_path
    expected = [reference_greedy(model, generator.encode(p), 24) for p in PROMPTS]
    alone = [generator.generate([generator.encode(p)])[0][0].token_ids for p in PROMPTS]
    assert generator.paths == {"fast decode"}
    batched = run_prompts(generator, PROMPTS, batch_size=4, context=128)
    assert generator.paths == {"fast decode", "model.generate"}
    assert alone == expected
    # In one batch the short prompts are left-padded to the longest one: same tokens.
    assert [r.sequences[0].token_ids for r in batched] == expected
    assert all(len(ids) == 24 for ids in expected)
    assert [r.sequences[0].text for r in batched] == [tokenizer.decode(ids) for ids in expected]


@pytest.mark.integration
def test_greedy_equals_model_generate_for_a_pretrained_folder(pretrained_folder):
    model, tokenizer = load_for_generation(ModelSettings(name=str(pretrained_folder)))
    assert model.generation_config.do_sample  # pretrain saves sampling defaults; --greedy must override them
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=30))
    assert generator.uses_fast_path
    for prompt in PROMPTS[:2]:
        ids = generator.encode(prompt)
        assert generator.generate([ids])[0][0].token_ids == reference_greedy(model, ids, 30)


def test_beam_search_and_penalties_go_through_model_generate(gpt2):
    model, tokenizer = gpt2
    settings = DecodingSettings(
        max_new_tokens=20, num_beams=3, num_return_sequences=2, no_repeat_ngram_size=2, repetition_penalty=1.3
    )
    generator = Generator(model, tokenizer, settings)
    assert not generator.uses_fast_path
    ids = generator.encode(PROMPTS[0])
    with torch.no_grad():
        rows = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=20,
            num_beams=3,
            num_return_sequences=2,
            no_repeat_ngram_size=2,
            repetition_penalty=1.3,
            do_sample=False,
        )[:, len(ids) :].tolist()
    eos = tokenizer.eos_token_id
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in rows]
    assert [s.token_ids for s in generator.generate([ids])[0]] == expected


def test_streaming_prints_the_same_text_as_non_streaming(tiny_gpt2):
    recipe = GenerateRecipe(
        model=ModelSettings(name=str(tiny_gpt2)), decoding=DecodingSettings(max_new_tokens=30)
    )
    streamed, quiet = io.StringIO(), io.StringIO()
    (record,) = run_generate(recipe, PROMPTS[1], None, None, stream=True, out=streamed, err=io.StringIO())
    (again,) = run_generate(recipe, PROMPTS[1], None, None, stream=False, out=quiet, err=io.StringIO())
    assert streamed.getvalue() == quiet.getvalue() == record["generated"] + "\n"
    assert record["generated"] == again["generated"] and record["generated_tokens"] == 30

    # A stop string: the streamer holds text back until it knows it is not the start of one.
    stop = record["generated"][8:12]
    cut = record["generated"][: record["generated"].find(stop)]
    recipe.decoding.stop = [stop]
    streamed, quiet = io.StringIO(), io.StringIO()
    (stopped,) = run_generate(recipe, PROMPTS[1], None, None, stream=True, out=streamed, err=io.StringIO())
    run_generate(recipe, PROMPTS[1], None, None, stream=False, out=quiet, err=io.StringIO())
    assert stopped["generated"] == cut
    assert streamed.getvalue() == quiet.getvalue() == cut + "\n"
    assert stopped["generated_tokens"] < 30  # generation ended at the stop string, not at max_new_tokens


def test_seed_reproduces_sampling_and_another_seed_differs(gpt2):
    model, tokenizer = gpt2

    def sample(seed: int) -> str:
        from transformers import set_seed

        set_seed(seed)
        generator = Generator(
            model,
            tokenizer,
            DecodingSettings(max_new_tokens=25, do_sample=True, top_p=0.95, temperature=1.0, seed=seed),
        )
        return generator.generate([generator.encode(PROMPTS[0])])[0][0].text

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_seed_is_drawn_and_recorded_when_sampling_without_one(tiny_gpt2):
    recipe = GenerateRecipe(
        model=ModelSettings(name=str(tiny_gpt2)), decoding=DecodingSettings(max_new_tokens=12, do_sample=True)
    )
    (first,) = run_generate(recipe, "A robot", None, None, stream=False, out=io.StringIO(), err=io.StringIO())
    seed = first["settings"]["seed"]
    assert isinstance(seed, int)
    recipe.decoding.seed = seed
    (again,) = run_generate(recipe, "A robot", None, None, stream=False, out=io.StringIO(), err=io.StringIO())
    assert again["generated"] == first["generated"]


def test_stop_string_in_a_batch_trims_each_row(gpt2):
    model, tokenizer = gpt2
    plain = Generator(model, tokenizer, DecodingSettings(max_new_tokens=30))
    texts = [r.sequences[0].text for r in run_prompts(plain, PROMPTS, 4, 128)]
    stop = texts[0][5:8]
    stopped = run_prompts(
        Generator(model, tokenizer, DecodingSettings(max_new_tokens=30, stop=[stop])), PROMPTS, 4, 128
    )
    for text, result in zip(texts, stopped, strict=True):
        assert result.sequences[0].text == text.split(stop)[0]
        assert stop not in result.sequences[0].text


def test_empty_prompt_generates_from_the_begin_of_text_token(gpt2):
    model, tokenizer = gpt2
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=15))
    assert generator.encode("") == [tokenizer.bos_token_id]
    (result,) = run_prompts(generator, [""], 1, 128)
    assert result.sequences[0].token_ids == reference_greedy(model, [tokenizer.bos_token_id], 15)


def test_prompt_too_long_for_the_context_names_max_new_tokens(gpt2):
    model, tokenizer = gpt2
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=120))
    with pytest.raises(HftoolError, match="--max-new-tokens 120"):
        run_prompts(generator, [PROMPTS[1]], 1, context=128)


def test_device_map_auto_offloads_what_does_not_fit_to_disk(tiny_gpt2, gpt2, tmp_path):
    settings = ModelSettings(
        name=str(tiny_gpt2),
        device_map="auto",
        offload_folder=str(tmp_path / "offload"),
        max_memory={"cpu": "60KB"},
    )
    model, tokenizer = load_for_generation(settings)
    assert "disk" in model.hf_device_map.values()
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=20))
    ids = generator.encode(PROMPTS[0])
    assert generator.generate([ids])[0][0].token_ids == reference_greedy(gpt2[0], ids, 20)


@pytest.mark.integration
def test_cli_jsonl_in_and_out_in_input_order_without_pad_or_mask_warnings(tiny_gpt2, gpt2, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"text": p} for p in PROMPTS] + [{"text": ""}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = hftool_cli(
        "generate",
        "-m",
        str(tiny_gpt2),
        "--input",
        str(prompts),
        "--column",
        "text",
        "--output",
        str(out),
        "-n",
        "12",
        "--batch-size",
        "3",
        TRANSFORMERS_VERBOSITY="warning",
        PYTHONWARNINGS="always",
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == [r["text"] for r in rows]
    assert [r["index"] for r in records] == list(range(len(rows)))
    model, tokenizer = gpt2
    for record in records:
        ids = tokenizer(record["prompt"])["input_ids"] or [tokenizer.bos_token_id]
        assert record["prompt_tokens"] == len(ids)
        expected = reference_greedy(model, ids, 12)  # may end early, at the end-of-text token
        assert record["generated"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert record["generated_tokens"] == len(expected)
        assert record["settings"] == {
            "max_new_tokens": 12,
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "stop": [],
        }
    logged = done.stderr.lower()
    assert "pad_token" not in logged and "attention mask" not in logged and "attention_mask" not in logged
    assert "warn" not in logged
    assert "tokens/s" in done.stderr


def test_single_prompt_streams_and_reports_tokens_per_second(tiny_bloom, bloom):
    recipe = GenerateRecipe(
        model=ModelSettings(name=str(tiny_bloom)), decoding=DecodingSettings(max_new_tokens=10)
    )
    out, err = io.StringIO(), io.StringIO()
    run_generate(recipe, PROMPTS[0], None, None, stream=True, out=out, err=err)
    model, tokenizer = bloom
    new_ids = reference_greedy(model, tokenizer(PROMPTS[0])["input_ids"], 10)
    assert out.getvalue() == tokenizer.decode(new_ids, skip_special_tokens=True) + "\n"
    assert f"{len(new_ids)} tokens generated" in err.getvalue()
    assert "tokens/s (fast decode)" in err.getvalue()


def test_recipe_then_overrides_then_flags(tiny_gpt2, tmp_path):
    from hftool.config import load_recipe
    from hftool.schemas.generate import apply_flags

    recipe = load_recipe(GenerateRecipe, "bloom-560m", ["decoding.top_p=0.8", f"model.name={tiny_gpt2}"])
    assert (recipe.decoding.top_p, recipe.decoding.temperature) == (0.8, 0.7)
    assert recipe.model.name == str(tiny_gpt2)
    flagged = apply_flags(recipe, top_p=0.5, temperature=None, name=None)
    assert (flagged.decoding.top_p, flagged.decoding.temperature, flagged.model.name) == (
        0.5,
        0.7,
        str(tiny_gpt2),
    )


def test_generate_recipes_validate_and_bloom_is_not_greedy():
    from hftool.config import RECIPES_DIR
    from hftool.recipes import validate_recipe

    paths = sorted((RECIPES_DIR / "generate").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"bloom-560m", "gpt2", "local-gpt2-tiny"}
    for path in paths:
        assert path.read_text(encoding="utf-8").startswith("#")
        validate_recipe(path, [])
    from hftool.config import load_recipe

    bloom = load_recipe(GenerateRecipe, "bloom-560m").decoding
    assert bloom.do_sample and (bloom.repetition_penalty > 1 or bloom.no_repeat_ngram_size > 0)


@pytest.mark.integration
def test_alias_resolves_to_hub_id_with_one_line_offline_error(tmp_path, monkeypatch):
    from hftool import hub
    from hftool.hub import ALIASES, resolve_model

    assert ALIASES["bloom-560m"] == "bigscience/bloom-560m"
    looked_up = []
    monkeypatch.setattr(hub, "_cached_on_disk", lambda repo_id: looked_up.append(repo_id) and False)
    with pytest.raises(HftoolError, match=r"'bloom-560m' \(bigscience/bloom-560m\).*offline"):
        resolve_model("bloom-560m")
    assert looked_up == ["bigscience/bloom-560m"]  # the cache is searched under the Hub id, not the alias
    # The real cache check, in a fresh process with an empty Hugging Face cache:
    done = hftool_cli("generate", "--recipe", "bloom-560m", "-p", "Hello", HF_HOME=str(tmp_path / "hf"))
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --model 'bloom-560m' (bigscience/")
    assert "Traceback" not in done.stderr


def test_summarize_truncates_samples_top_k_and_scores_rouge(tiny_gpt2, tmp_path):
    article = tmp_path / "article.txt"
    article.write_text(SAMPLE_TEXT, encoding="utf-8")  # far longer than the 128-position model
    reference = tmp_path / "reference.txt"
    reference.write_text(
        "Transformers read whole sentences. Language models predict words.", encoding="utf-8"
    )
    recipe = GenerateRecipe(
        model=ModelSettings(name=str(tiny_gpt2)),
        decoding=DecodingSettings(max_new_tokens=30, do_sample=True, top_k=2, seed=0),
    )
    out = io.StringIO()
    result = run_summarize(
        recipe,
        str(article),
        "article",
        None,
        str(reference),
        sentences=3,
        max_context=None,
        output_path=str(tmp_path / "out.jsonl"),
        out=out,
        err=io.StringIO(),
    )
    (record,) = result["records"]
    assert record["article_truncated"] and record["prompt_tokens"] == 128 - 30
    assert record["settings"]["top_k"] == 2 and record["settings"]["sentences"] == 3
    assert result["scores"] == rouge([record["summary"]], [reference.read_text(encoding="utf-8")])
    assert set(result["scores"]) == {"rouge1", "rouge2", "rougeL"}
    assert out.getvalue().startswith(record["summary"] + "\n") and "ROUGE-1" in out.getvalue()
    written = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert written["summary"] == record["summary"]


def test_translate_cuts_at_line_end_and_scores_bleu_chrf(tiny_bloom, tmp_path):
    sentences = tmp_path / "en.txt"
    sentences.write_text("The house is blue.\nI like apples.\n", encoding="utf-8")
    references = tmp_path / "fr.txt"
    references.write_text("La maison est bleue.\nJ'aime les pommes.\n", encoding="utf-8")
    recipe = GenerateRecipe(
        model=ModelSettings(name=str(tiny_bloom)), decoding=DecodingSettings(max_new_tokens=16, stop=["\n"])
    )
    out = io.StringIO()
    result = run_translate(
        recipe,
        None,
        str(sentences),
        "source",
        None,
        str(references),
        None,
        shots=3,
        max_context=None,
        output_path=None,
        out=out,
        err=io.StringIO(),
    )
    records = result["records"]
    assert [r["source"] for r in records] == ["The house is blue.", "I like apples."]
    assert all(r["shots"] == 3 and "\n" not in r["translation"] for r in records)
    translations = [r["translation"] for r in records]
    assert result["scores"] == bleu_chrf(translations, ["La maison est bleue.", "J'aime les pommes."])
    assert out.getvalue().splitlines()[:2] == translations


BAD_INPUTS = [
    (["generate", "--sample", "--temperature", "0", "-p", "x"], "--temperature"),
    (["generate", "--top-p", "0", "-p", "x"], "--top-p"),
    (["generate", "--top-p", "1.5", "-p", "x"], "--top-p"),
    (["generate", "--top-k", "-1", "-p", "x"], "--top-k"),
    (["generate", "--max-new-tokens", "0", "-p", "x"], "--max-new-tokens"),
    (["generate", "--num-beams", "0", "-p", "x"], "--num-beams"),
    (["generate", "--num-return-sequences", "3", "-p", "x"], "--num-return-sequences"),
    (["generate", "decoding.top_p=2", "-p", "x"], "--top-p"),
    (["generate", "--dtype", "float8", "-p", "x"], "--dtype"),
    (["generate"], "--prompt"),
    (["generate", "--input", "{tmp}/missing.txt"], "--input"),
    (["generate", "--input", "{tmp}/blank.txt"], "--input"),
    (["generate", "--input", "{tmp}/wrong-field.jsonl"], "--input"),
    (["summarize", "--sentences", "0", "--input", "{tmp}/blank.txt"], "--sentences"),
    (["summarize", "--input", "{tmp}/blank.txt"], "--input"),
    (["translate", "--shots", "-1", "hello"], "--shots"),
    (["translate", "--pairs", "{tmp}/missing.tsv", "hello"], "--pairs"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("args", "flag"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_naming_the_flag_before_any_model_loads(args, flag, tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
    (tmp_path / "wrong-field.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    # The model folder does not exist: an error about it would mean the flags were checked after loading.
    argv = [a.format(tmp=tmp_path) for a in args] + ["--model", str(tmp_path / "no-such-model")]
    done = hftool_cli(*argv)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert flag in done.stderr and "no-such-model" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_a_model_that_is_not_a_causal_lm_is_named(tiny_bert):
    code, _, err = run_cli(["generate", "-m", str(tiny_bert), "-p", "hello"])  # the entry point, in process
    assert code != 0 and err.count("\n") == 1
    assert err.startswith("error: --model") and "BertForPreTraining" in err
    assert "not a causal language model" in err and "Traceback" not in err


@pytest.mark.cpu_features
@pytest.mark.parametrize("name", ["gpt2", "bloom"])
def test_bfloat16_greedy_equals_model_generate_and_leaves_the_onednn_switch_alone(name, request):
    """In bfloat16 the decode steps run on the forward's kernels, as model.generate does: the same tokens on
    every prompt, with oneDNN's process-wide switch as it was."""
    model, tokenizer = load_for_generation(
        ModelSettings(name=str(request.getfixturevalue(f"tiny_{name}")), dtype="bfloat16")
    )
    assert model.dtype == torch.bfloat16
    before = torch.backends.mkldnn.enabled
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=24))
    for prompt in PROMPTS:
        ids = generator.encode(prompt)
        assert generator.generate([ids])[0][0].token_ids == reference_greedy(model, ids, 24)
        assert torch.backends.mkldnn.enabled == before
    assert generator.paths == {"fast decode"}  # the first-step check passes in bfloat16 too


def test_a_recipe_name_shared_with_another_command_resolves_to_the_commands_own(tmp_path, monkeypatch):
    from hftool import config
    from hftool.schemas.pretrain import PretrainRecipe

    for command, body in (
        ("generate", "decoding:\n  top_p: 0.5\n"),
        ("pretrain", "train:\n  max_steps: 7\n"),
    ):
        (tmp_path / command).mkdir()
        (tmp_path / command / "shared-name.yaml").write_text(f"command: {command}\n{body}", encoding="utf-8")
    monkeypatch.setattr(config, "RECIPES_DIR", tmp_path)
    assert config.load_recipe(GenerateRecipe, "shared-name").decoding.top_p == 0.5
    assert config.load_recipe(PretrainRecipe, "shared-name").train.max_steps == 7
    with pytest.raises(HftoolError, match="ambiguous: generate/shared-name, pretrain/shared-name"):
        config.find_recipe("shared-name")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_prompt_progress_only_on_a_terminal(tiny_gpt2, tmp_path):
    """Issue 24 item 16: the '\\r2/3 prompts' counter is for a terminal; a log file gets no carriage returns."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n", encoding="utf-8")
    recipe = GenerateRecipe(model=ModelSettings(name=str(tiny_gpt2)), decoding=DecodingSettings(max_new_tokens=2),
                            batch_size=2)
    for err, shown in ((io.StringIO(), False), (_Terminal(), True)):
        run_generate(recipe, None, str(prompts), None, out=io.StringIO(), err=err)
        assert ("\r" in err.getvalue()) == shown
        assert ("3/3 prompts\n" in err.getvalue()) == shown
        assert "3 prompt(s), " in err.getvalue()
