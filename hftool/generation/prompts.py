"""GPT-2's zero-shot task prompts (Radford et al., 2019): "TL;DR:" summaries and few-shot translation.

Prompts are built as token ids so truncation is exact: the article is cut at the token level, and the
translation examples are dropped (oldest first) until the prompt and the answer fit the model's context.
"""

from __future__ import annotations

import json
import re

from hftool.data.files import existing_input, read_input_text
from hftool.errors import HftoolError

TLDR_SUFFIX = "\nTL;DR:"
PAIR_SEPARATOR = " = "

# English→French pairs for the default few-shot prompt: everyday sentences with correct French translations.
DEFAULT_EN_FR_PAIRS: list[tuple[str, str]] = [
    ("The cat is sleeping on the sofa.", "Le chat dort sur le canapé."),
    ("I would like a cup of coffee, please.", "Je voudrais une tasse de café, s'il vous plaît."),
    ("Where is the train station?", "Où est la gare ?"),
    ("We are going to the beach tomorrow.", "Nous allons à la plage demain."),
    ("My sister works in a hospital.", "Ma sœur travaille dans un hôpital."),
    ("It is raining today.", "Il pleut aujourd'hui."),
    ("The book is on the table.", "Le livre est sur la table."),
    ("How much does this shirt cost?", "Combien coûte cette chemise ?"),
    ("They live in a small house near the river.", "Ils habitent dans une petite maison près de la rivière."),
    ("I do not understand the question.", "Je ne comprends pas la question."),
    ("The children are playing in the garden.", "Les enfants jouent dans le jardin."),
    ("She reads a newspaper every morning.", "Elle lit un journal tous les matins."),
]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def summarization_prompt(
    tokenizer, article: str, context: int, max_new_tokens: int
) -> tuple[list[int], str, bool]:
    """``<article>\\nTL;DR:`` as ids, the article cut from its end so prompt + summary fit ``context``.

    Returns the ids, the prompt text they stand for, and whether the article was truncated.
    """
    suffix = tokenizer(TLDR_SUFFIX, add_special_tokens=False)["input_ids"]
    budget = context - max_new_tokens - len(suffix)
    if budget < 1:
        raise HftoolError(
            f"--max-new-tokens {max_new_tokens} leaves no room for the article in the model's "
            f"{context} positions; lower it"
        )
    article_ids = tokenizer(article, add_special_tokens=False)["input_ids"]
    kept = article_ids[:budget]
    truncated = len(kept) < len(article_ids)
    text = (tokenizer.decode(kept) if truncated else article) + TLDR_SUFFIX
    return kept + suffix, text, truncated


def first_sentences(text: str, count: int) -> str:
    """The first ``count`` sentences of ``text`` with whitespace collapsed (the GPT-2 paper keeps 3)."""
    sentences = [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]
    return " ".join(sentences[:count])


def translation_prompt(
    tokenizer, pairs: list[tuple[str, str]], sentence: str, context: int, max_new_tokens: int
) -> tuple[list[int], str, int]:
    """``source = target`` lines, then ``sentence =``; the oldest pairs are dropped until it fits ``context``.

    Returns the ids, the prompt text and how many example pairs it kept.
    """
    query = f"{sentence.strip()}{PAIR_SEPARATOR.rstrip()}"
    for start in range(len(pairs) + 1):
        kept = pairs[start:]
        text = "".join(f"{src}{PAIR_SEPARATOR}{tgt}\n" for src, tgt in kept) + query
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + max_new_tokens <= context:
            return ids, text, len(kept)
    raise HftoolError(
        f"the sentence to translate does not fit the model's {context} positions with "
        f"--max-new-tokens {max_new_tokens}; shorten it or lower --max-new-tokens"
    )


def first_line(text: str) -> str:
    """The translation: generated text up to the end of its first line."""
    return text.split("\n", 1)[0].strip()


def read_pairs(path: str, flag: str = "--pairs") -> list[tuple[str, str]]:
    """Example pairs from a TSV file (``source<TAB>target`` per line) or JSONL (``{"source", "target"}``)."""
    file = existing_input(path, flag)
    pairs = []
    for number, line in enumerate(read_input_text(file, f"{flag} {path}").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{flag} {path}:{number}"
        if file.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HftoolError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in ("source", "target")
            ):
                raise HftoolError(f"{where}: needs string fields 'source' and 'target'")
            source, target = record["source"], record["target"]
        else:
            fields = line.split("\t")
            if len(fields) != 2:
                raise HftoolError(
                    f"{where}: expected 'source<TAB>target', found {len(fields)} tab-separated fields"
                )
            source, target = fields
        if not source.strip() or not target.strip() or "\n" in source + target:
            raise HftoolError(f"{where}: source and target must be non-empty, single-line text")
        pairs.append((source.strip(), target.strip()))
    if not pairs:
        raise HftoolError(f"{flag} {path}: no pairs in the file")
    return pairs
