"""Train a tokenizer with the ``tokenizers`` library and wrap it as a transformers fast tokenizer.

Two families, as the models they serve use them:

* ``byte-bpe``: byte-level BPE as in GPT-2 and BLOOM. No unknown tokens; ``<|endoftext|>`` separates documents
  and doubles as padding (left padding with an attention mask for batched generation).
* ``wordpiece``: BERT's WordPiece with ``[PAD] [UNK] [CLS] [SEP] [MASK]``, optional lower-casing, and the
  ``[CLS] A [SEP] B [SEP]`` template with token type ids 0/1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from hftool.errors import HftoolError

TokenizerKind = Literal["byte-bpe", "wordpiece"]
GPT_SPECIAL = "<|endoftext|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_vocab_size(kind: str, vocab_size: int, setting: str = "tokenizer.vocab_size") -> None:
    """Refuse a byte-level vocabulary too small for its 256 bytes, naming the flag or key that set it."""
    if vocab_size < 300 and kind == "byte-bpe":
        raise HftoolError(f"{setting}={vocab_size} is below the 256 bytes + specials that "
                          "byte-level BPE needs; use at least 300")


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind = "byte-bpe",
    vocab_size: int = 8000,
    lowercase: bool = False,
    min_frequency: int = 2,
):
    """Train a tokenizer on ``texts`` and return a ``PreTrainedTokenizerFast`` ready to ``save_pretrained``.

    Args:
        texts: the training documents (an iterator is fine: they are streamed to the trainer).
        kind: ``byte-bpe`` (GPT-2/BLOOM) or ``wordpiece`` (BERT).
        vocab_size: target vocabulary size, special tokens included.
        lowercase: lower-case and strip accents first (BERT "uncased"); WordPiece only.
        min_frequency: pairs/words seen fewer times are not merged into the vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    check_vocab_size(kind, vocab_size)
    if kind == "byte-bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[GPT_SPECIAL],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(_batched(texts), trainer=trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=GPT_SPECIAL, eos_token=GPT_SPECIAL, unk_token=GPT_SPECIAL,
            pad_token=GPT_SPECIAL, model_input_names=["input_ids", "attention_mask"],
        )
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=lowercase, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=BERT_SPECIALS, continuing_subword_prefix="##",
                                            show_progress=False)
        tok.train_from_iterator(_batched(texts), trainer=trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", do_lower_case=lowercase,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    raise HftoolError(f"tokenizer.kind={kind!r} is not one of: byte-bpe, wordpiece")
