"""hftool.loading's tokenizer options: what the labelling, SQuAD and generation commands need of a tokenizer,
asked of the one loader instead of patched on by each command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hftool.errors import HftoolError
from hftool.loading import ModelRef, load_tokenizer


def _tokenizer_without(model: Path, folder: Path, *tokens: str) -> ModelRef:
    """A copy of ``model`` whose tokenizer lacks the special ``tokens`` (GPT-2 ships without a pad token)."""
    shutil.copytree(model, folder)
    settings = folder / "tokenizer_config.json"
    config = json.loads(settings.read_text())
    config.update(dict.fromkeys(tokens))
    settings.write_text(json.dumps(config))
    return ModelRef(str(folder))


def test_gpt2_words_get_a_prefix_space_and_batches_its_end_of_text_token(tiny_gpt2, tmp_path):
    ref = _tokenizer_without(tiny_gpt2, tmp_path / "gpt2", "pad_token")
    plain = load_tokenizer(ref, "gpt2", "--model")
    assert plain.pad_token is None and not plain.add_prefix_space
    ready = load_tokenizer(ref, "gpt2", "--model", split_words=True, offsets_for="word alignment", pad=True)
    assert ready.add_prefix_space
    assert ready.pad_token == ready.eos_token is not None
    # each word is encoded as inside a sentence, as the saved tokenizer.json alone would not do
    words = ["the", "model", "reads", "words"]
    as_words = ready(words, is_split_into_words=True, add_special_tokens=False).input_ids
    assert as_words == plain(" " + " ".join(words), add_special_tokens=False).input_ids
    assert plain(words, is_split_into_words=True, add_special_tokens=False).input_ids != as_words
    ready.save_pretrained(tmp_path / "saved")  # a NER run's folder keeps encoding words that way
    assert load_tokenizer(ModelRef(str(tmp_path / "saved")), "saved", "--model")(
        words, is_split_into_words=True, add_special_tokens=False).input_ids == as_words


def test_a_wordpiece_tokenizer_is_left_as_it_is_for_words(tiny_bert):
    plain = load_tokenizer(ModelRef(str(tiny_bert)), "bert", "--model")
    ready = load_tokenizer(ModelRef(str(tiny_bert)), "bert", "--model", split_words=True)
    assert str(ready.backend_tokenizer.pre_tokenizer) == str(plain.backend_tokenizer.pre_tokenizer)
    assert not getattr(ready, "add_prefix_space", False)


def test_a_slow_tokenizer_is_refused_naming_what_needs_offsets(tmp_path):
    from transformers import ByT5Tokenizer

    folder = tmp_path / "slow"
    ByT5Tokenizer().save_pretrained(folder)
    assert load_tokenizer(ModelRef(str(folder)), "slow", "--model").is_fast is False
    with pytest.raises(HftoolError) as refused:
        load_tokenizer(ModelRef(str(folder)), "slow", "--model", offsets_for="question answering")
    assert str(refused.value) == ("--model slow: the tokenizer ByT5Tokenizer is a slow (Python) tokenizer without "
                                  "offset mappings; question answering needs a fast tokenizer (a folder with "
                                  "tokenizer.json)")


def test_padding_without_a_pad_or_end_of_text_token_is_refused(tiny_gpt2, tmp_path):
    ref = _tokenizer_without(tiny_gpt2, tmp_path / "no-eos", "pad_token", "eos_token", "bos_token", "unk_token")
    with pytest.raises(HftoolError, match="--model no-eos: the tokenizer has neither a pad nor an end-of-text token"):
        load_tokenizer(ref, "no-eos", "--model", pad=True)
