"""``hftool explain``: the numbers behind each picture are checked against the models computed directly."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO
from typer.testing import CliRunner

from hftool.cli import app
from hftool.errors import HftoolError
from hftool.explain import attention, embeddings, plots, positional, predictions
from hftool.explain.loading import load_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str):
    return CliRunner().invoke(app, ["explain", *map(str, args)])


def assert_valid_png(path: Path, min_pixels: int = 200) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width >= min_pixels and height >= min_pixels
    assert pixels.std() > 10, "the image is blank"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    assert leftovers == [], "a temporary file was left beside the PNG"


# positional encoding


@pytest.mark.parametrize("d_model", [16, 7])
def test_sinusoidal_encoding_matches_the_formula(d_model):
    encoding = positional.sinusoidal_encoding(positions=30, d_model=d_model)
    assert encoding.shape == (30, d_model)
    assert np.allclose(encoding[0], [0.0 if dim % 2 == 0 else 1.0 for dim in range(d_model)])
    for pos in (1, 7, 29):
        for dim in range(d_model):
            angle = pos / 10000 ** (2 * (dim // 2) / d_model)
            expected = math.sin(angle) if dim % 2 == 0 else math.cos(angle)
            assert encoding[pos, dim] == pytest.approx(expected, abs=1e-12)


def test_near_positions_are_more_similar_than_far_ones():
    encoding = positional.sinusoidal_encoding(positions=200, d_model=64)
    by_distance = positional.similarity_by_distance(encoding, [1, 2, 5, 10, 50, 500])
    assert list(by_distance) == [1, 2, 5, 10, 50]
    values = list(by_distance.values())
    assert values == sorted(values, reverse=True)
    norms = np.linalg.norm(encoding, axis=1)
    direct = np.mean([encoding[i] @ encoding[i + 5] / norms[i] / norms[i + 5] for i in range(195)])
    assert by_distance[5] == pytest.approx(direct)


def test_learned_position_embeddings_are_the_models_tables(tiny_gpt2, tiny_bert):
    from transformers import AutoModelForCausalLM, BertForPreTraining

    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert np.array_equal(positional.learned_position_embeddings(str(tiny_gpt2)),
                          gpt2.transformer.wpe.weight.detach().numpy())
    bert = BertForPreTraining.from_pretrained(tiny_bert)
    assert np.array_equal(positional.learned_position_embeddings(str(tiny_bert)),
                          bert.bert.embeddings.position_embeddings.weight.detach().numpy())


def test_bloom_has_no_position_table_and_the_error_says_alibi(tiny_bloom):
    with pytest.raises(HftoolError, match="BloomForCausalLM has no learned position embeddings; it uses "
                                          "ALiBi, a per-head penalty"):
        positional.learned_position_embeddings(str(tiny_bloom))


# attention


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_bloom"])
def test_causal_attention_is_zero_above_the_diagonal_and_rows_sum_to_one(fixture, request):
    loaded = load_model(str(request.getfixturevalue(fixture)), eager_attention=True)
    maps = attention.attention_maps(loaded, "A robot must obey the orders given it by human beings.")
    tokens = len(maps.tokens)
    assert maps.causal
    assert maps.weights.shape == (2, 4, tokens, tokens) and tokens > 5
    assert maps.layers == [1, 2] and maps.heads == [1, 2, 3, 4]
    above_diagonal = np.triu(np.ones((tokens, tokens), dtype=bool), k=1)
    assert np.all(maps.weights[..., above_diagonal] == 0)
    assert np.allclose(maps.weights.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_bert", "minilm"])
def test_bert_attention_looks_both_ways(fixture, request):
    loaded = load_model(str(request.getfixturevalue(fixture)), eager_attention=True)
    maps = attention.attention_maps(loaded, "the bank of the river")
    assert not maps.causal
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]"
    above_diagonal = np.triu(np.ones(maps.weights.shape[-2:], dtype=bool), k=1)
    on_later_tokens = maps.weights[..., above_diagonal].sum(axis=(1, 2))
    share_on_later_tokens = on_later_tokens / maps.weights.sum(axis=(1, 2, 3))
    assert share_on_later_tokens.min() > 0.1, "every layer should attend to later tokens too"
    assert np.allclose(maps.weights.sum(axis=-1), 1.0, atol=1e-5)


def test_chosen_layers_and_heads_are_the_models_own(tiny_gpt2):
    from transformers import AutoTokenizer

    loaded = load_model(str(tiny_gpt2), eager_attention=True)
    text = "Attention lets every token look"
    maps = attention.attention_maps(loaded, text, layers=[-1], heads=[3, 1])
    assert maps.layers == [2] and maps.heads == [3, 1]
    encoding = AutoTokenizer.from_pretrained(tiny_gpt2)(text, return_tensors="pt")
    with torch.no_grad():
        direct = loaded.model(**encoding, output_attentions=True).attentions[1][0]
    assert np.allclose(maps.weights[0], direct[[2, 0]].numpy())
    with pytest.raises(HftoolError, match=r"--layer 3: the model has 2, numbered 1 to 2"):
        attention.attention_maps(loaded, "Attention", layers=[3])
    with pytest.raises(HftoolError, match=r"--head 0: the model has 4"):
        attention.attention_maps(loaded, "Attention", heads=[0])


# embeddings


def test_a_word_is_identical_to_itself_in_the_same_sentence(tiny_bert):
    loaded = load_model(str(tiny_bert))
    sentence = "The robot must obey the orders."
    result = embeddings.word_embeddings(loaded, "orders", [sentence, sentence])
    assert result.contextual_similarity[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert result.static_similarity[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_the_word_vector_is_the_mean_of_its_subword_hidden_states(tiny_bert):
    from transformers import AutoTokenizer, BertModel

    loaded = load_model(str(tiny_bert))
    result = embeddings.word_embeddings(loaded, "bank", ["the bank of a river", "a bank lent money"], layer=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert result.subwords[0] == ["b", "##an", "##k"] == tokenizer.tokenize("bank")
    model = BertModel.from_pretrained(tiny_bert).eval()
    encoding = tokenizer("the bank of a river", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoding, output_hidden_states=True).hidden_states[1][0]
    assert np.allclose(result.contextual[0], hidden[2:5].mean(dim=0).numpy(), atol=1e-6)
    rows = model.embeddings.word_embeddings.weight[tokenizer.convert_tokens_to_ids(["b", "##an", "##k"])]
    assert np.allclose(result.static[0], rows.mean(dim=0).detach().numpy())


def test_context_changes_the_contextual_vector_but_not_the_static_one(minilm):
    loaded = load_model(str(minilm))
    result = embeddings.word_embeddings(loaded, "bank", ["We sat on the river bank and watched the water.",
                                                         "The bank lent me money for a house."])
    assert result.subwords == [["bank"], ["bank"]]
    assert result.layer == 6
    assert result.contextual_similarity[0, 1] < 0.95
    assert result.static_similarity[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_a_word_missing_from_a_sentence_is_named():
    with pytest.raises(HftoolError, match="--word 'bank' is not in --sentence 'The river is wide.'"):
        embeddings.word_spans("bank", ["A river bank.", "The river is wide."])
    with pytest.raises(HftoolError, match="not in"):
        embeddings.word_spans("bank", ["The riverbank.", "A bank."])


# fill-mask and next-token


def test_fill_mask_top_k_is_the_argsort_of_the_models_logits(tiny_bert):
    from transformers import AutoTokenizer, BertForPreTraining

    text = "the quick brown [MASK] jumps over the [MASK] dog"
    masks = predictions.fill_mask(load_model(str(tiny_bert), "masked-lm"), text, top_k=7)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    encoding = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = BertForPreTraining.from_pretrained(tiny_bert)(**encoding).prediction_logits[0]
    positions = (encoding["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    assert [mask.position for mask in masks] == positions and len(positions) == 2
    for mask in masks:
        expected_ids = torch.argsort(logits[mask.position], descending=True)[:7].tolist()
        assert [c.token_id for c in mask.candidates] == expected_ids
        expected_probabilities = torch.softmax(logits[mask.position], dim=-1)[expected_ids]
        probabilities = [c.probability for c in mask.candidates]
        assert np.allclose(probabilities, expected_probabilities.numpy(), atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_bloom"])
def test_next_token_top_k_is_the_argsort_of_the_models_logits(fixture, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(fixture)
    text = "A robot must obey"
    prediction = predictions.next_token(load_model(str(folder), "causal-lm"), text, top_k=5)
    encoding = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt")
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(folder)(**encoding).logits[0, -1]
    expected_ids = torch.argsort(logits, descending=True)[:5].tolist()
    assert [c.token_id for c in prediction.candidates] == expected_ids
    assert np.allclose([c.probability for c in prediction.candidates],
                       torch.softmax(logits, dim=-1)[expected_ids].numpy(), atol=1e-6)
    assert [c.logit for c in prediction.candidates] == pytest.approx(logits[expected_ids].tolist(), abs=1e-5)


def test_models_that_cannot_answer_are_refused_by_name(tiny_bert, tiny_gpt2, minilm):
    with pytest.raises(HftoolError, match="BertForPreTraining is an encoder-only"):
        load_model(str(tiny_bert), "causal-lm")
    with pytest.raises(HftoolError, match="BertModel checkpoint has no trained masked-language-model"):
        load_model(str(minilm), "masked-lm")
    with pytest.raises(HftoolError, match="GPT2LMHeadModel is not a masked language model"):
        load_model(str(tiny_gpt2), "masked-lm")


def test_text_without_the_mask_token_names_it(tiny_bert):
    loaded = load_model(str(tiny_bert), "masked-lm")
    with pytest.raises(HftoolError, match=r"--text has no \[MASK\] token; put \[MASK\] where"):
        predictions.fill_mask(loaded, "the quick brown fox", top_k=3)


# the command line: a PNG from every command, one-line errors


def test_every_command_writes_a_png(tmp_path, tiny_gpt2, tiny_bert, minilm):
    commands = {
        "positional-encoding": ["--d-model", "64", "--positions", "40", "--model", tiny_gpt2],
        "attention": ["--model", tiny_bert, "--text", "the robot must obey", "--layer", "-1"],
        "embeddings": ["--model", minilm, "-w", "bank", "-s", "A river bank.", "-s", "The bank lent money."],
        "fill-mask": ["--model", tiny_bert, "--text", "the robot must [MASK] orders", "-k", "5"],
        "next-token": ["--model", tiny_gpt2, "--text", "A robot must obey", "-k", "5"],
    }
    outputs = {}
    for command, args in commands.items():
        output = tmp_path / "pictures" / f"{command}.png"
        result = run_cli(command, *args, "--output", output)
        assert result.exit_code == 0, (command, result.output, result.exception)
        assert f"wrote {output}" in result.output
        assert_valid_png(output)
        outputs[command] = result.output
    assert "S1 · S2" in outputs["embeddings"] and "1.0000" in outputs["embeddings"]
    assert "probability" in outputs["next-token"]


@pytest.mark.parametrize("args, message", [
    (["embeddings", "--model", "unused", "-w", "bank", "-s", "a bank", "-s", "no such word"],
     "--word 'bank' is not in --sentence 'no such word'"),
    (["positional-encoding", "--positions", "0"], "--positions=0 must be at least 1"),
    (["positional-encoding", "--positions", "10001"], "--positions 10001: use a number from 1 to 10000"),
    (["positional-encoding", "--d-model", "8", "--dim", "9"], "--dim 9: dimensions are numbered 0 to 7"),
    (["attention", "--model", "./no-such-model", "--text", "hi"], "--model ./no-such-model: no such folder"),
    (["next-token", "--model", "gpt2", "--text", "hi", "-o", "picture.jpg"], "use a name ending in .png"),
    (["fill-mask", "--model", "bert", "--text", "[MASK]", "-k", "0"], "--top-k=0 must be at least 1"),
    (["fill-mask", "--model", "bert", "--text", "[MASK]", "-k", "1001"], "--top-k 1001: use a number from 1"),
])
def test_bad_input_fails_before_loading_anything(args, message):
    result = run_cli(*args)
    assert result.exit_code != 0
    assert isinstance(result.exception, HftoolError)
    assert message in str(result.exception)


@pytest.mark.integration
@pytest.mark.parametrize("command, message", [
    (["next-token", "--model", "{tiny_bert}", "--text", "a robot"],
     "error: --model {tiny_bert}: BertForPreTraining is an encoder-only (bidirectional) model"),
    (["embeddings", "--model", "{tiny_bert}", "-w", "bank", "-s", "a bank", "-s", "a river"],
     "error: --word 'bank' is not in --sentence 'a river'"),
])
def test_bad_input_is_a_one_line_error_from_the_real_cli(command, message, tiny_bert, tmp_path):
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "hftool", "explain", *(arg.format(tiny_bert=tiny_bert) for arg in command),
         "-o", str(tmp_path / "picture.png")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": python_path}, cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(tiny_bert=tiny_bert))
    assert not (tmp_path / "picture.png").exists()


def test_save_png_replaces_atomically_and_checks_the_name(tmp_path):
    figure = plots.new_figure(3, 3)
    figure.subplots().plot([0, 1], [1, 0])
    target = tmp_path / "line.png"
    target.write_bytes(b"old")
    assert plots.save_png(figure, target) == target
    assert_valid_png(target, min_pixels=100)
    with pytest.raises(HftoolError, match="is a folder"):
        plots.save_png(figure, tmp_path)
