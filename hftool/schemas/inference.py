"""The options of the commands that run a trained model on texts: ``answer``, ``classify``, ``tag`` and
``evaluate squad|classify|ner`` (batch sizes, lengths, columns, mixed precision, SQuAD windows).

Their defaults sit beside the recipes' (``data.max_length``, ``data.text_column``) so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from hftool.data import classification, conll, squad_windows
from hftool.schemas.fields import MIXED_PRECISIONS, Bound, MixedPrecision, at_least, one_of, setting

TAG_SCHEMES = ("iob2", "iob1")


@dataclass
class QAWindowOptions:
    """How SQuAD contexts are cut into windows and answers read back (answer, evaluate squad, serve /v1/qa);
    the defaults are the squad recipe's (``data.max_length``, ``data.doc_stride``, ...)."""

    max_length: int = setting(squad_windows.MAX_LENGTH, flag="--max-length",
                              bound=at_least(squad_windows.MIN_MAX_LENGTH),
                              help="Tokens per window (question + context).")
    doc_stride: int = setting(squad_windows.DOC_STRIDE, flag="--doc-stride", bound=at_least(0),
                              help="Context tokens shared by consecutive windows.")
    max_answer_length: int = setting(squad_windows.MAX_ANSWER_LENGTH, flag="--max-answer-length", bound=at_least(1),
                                     help="Longest answer, in tokens.")
    n_best: int = setting(squad_windows.N_BEST, flag="--n-best", bound=at_least(1),
                          help="Start/end candidates per window.")

    def as_tuple(self) -> tuple[int, int, int]:
        """(max_length, doc_stride, max_answer_length): the windows ``hftool serve`` answers /v1/qa with."""
        return self.max_length, self.doc_stride, self.max_answer_length


@dataclass
class PredictOptions:
    """``answer``, ``classify`` and ``tag``: texts in, predictions out."""

    batch_size: int = setting(32, flag="--batch-size", bound=at_least(1),
                              help="Windows or texts per batch.")
    text_max_length: int = setting(512, flag="--max-length", bound=at_least(classification.MIN_MAX_LENGTH),
                                   help="Tokens per text (longer ones are truncated).")
    tag_max_length: int = setting(512, flag="--max-length", bound=at_least(conll.MIN_MAX_LENGTH),
                                  help="Tokens per text (longer ones are truncated).")
    text_column: str = setting("text", flag="--text-column", help="Column holding the text in --input.")
    top_k: int = setting(3, flag="--top-k", short="-k", bound=at_least(1),
                         help="How many answers to show per question.")
    as_json: bool = setting(False, flag="--json", help="Print one JSON object per question or text.")


@dataclass
class EvaluateOptions:
    """``evaluate squad|classify|ner``: scoring a trained folder on labelled data."""

    batch_size: int = setting(64, flag="--batch-size", bound=at_least(1),
                              help="Windows, texts or sentences per batch (per process).")
    mixed_precision: MixedPrecision = setting("auto", flag="--mixed-precision", bound=one_of(MIXED_PRECISIONS),
                                              help="no, fp16, bf16, or auto (bf16 where the device supports it).")
    max_examples: int | None = setting(None, flag="--max-examples", bound=at_least(1),
                                       help="Score the first N only.")
    text_max_length: int = setting(classification.ClassifyDataConfig.max_length, flag="--max-length",
                                   bound=at_least(classification.MIN_MAX_LENGTH),
                                   help="Tokens per text (longer ones are truncated).")
    tag_max_length: int = setting(conll.NerDataConfig.max_length, flag="--max-length",
                                  bound=at_least(conll.MIN_MAX_LENGTH),
                                  help="Tokens per sentence (longer ones are truncated).")
    text_column: str = setting(classification.ClassifyDataConfig.text_column, flag="--text-column",
                               help="Column holding the text.")
    text_pair_column: str | None = setting(None, flag="--text-pair-column",
                                           help="Column holding the second text of a pair.")
    label_column: str = setting(classification.ClassifyDataConfig.label_column, flag="--label-column",
                                help="Column holding the label.")
    matthews: bool = setting(False, flag="--matthews", help="Also report Matthews correlation.")
    tag_scheme: str = setting(conll.NerDataConfig.tag_scheme, flag="--tag-scheme",
                              bound=Bound("must be iob2 or iob1", choices=TAG_SCHEMES),
                              help="iob2, or iob1 to convert IOB1 tags.")
    strict: bool = setting(False, flag="--strict",
                           help="Fail on answers whose text is not at answer_start (default: skip them).")
