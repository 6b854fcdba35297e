"""``hftool generate``, ``summarize`` and ``translate`` end to end: read inputs, check them, load the model,
generate, write, score, report.

Every input is read and checked before the model loads, so a typo costs no loading time.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
from pathlib import Path
from typing import TextIO

from hftool.data.files import existing_input, read_input_text, read_stdin_text
from hftool.errors import HftoolError
from hftool.generation.batching import (
    generate_in_batches,
    read_jsonl_column,
    read_prompts,
    result_record,
    run_prompts,
    write_jsonl,
)
from hftool.schemas.generate import DecodingSettings, GenerateRecipe


def with_seed(decoding: DecodingSettings) -> DecodingSettings:
    """Sampling without a seed gets a fresh one, recorded in the output so the run can be repeated."""
    if decoding.do_sample and decoding.seed is None:
        return dataclasses.replace(decoding, seed=secrets.randbelow(2**31))
    return decoding


def _prepare(recipe: GenerateRecipe, command: str):
    """Load the model and build the generator (seeded) for a validated recipe; ``command`` names the command in
    the refusal of a model that is not a decoder."""
    from transformers import set_seed

    from hftool.generation.decoding import Generator
    from hftool.generation.loading import load_for_generation

    model, tokenizer = load_for_generation(recipe.model, command=command)
    generator = Generator(model, tokenizer, recipe.decoding)
    if recipe.decoding.seed is not None:
        set_seed(recipe.decoding.seed)
    return model, tokenizer, generator


def _report(generator, count: int, what: str, err: TextIO) -> None:
    path = " and ".join(sorted(generator.paths)) or "nothing generated"
    err.write(
        f"{count} {what}, {generator.generated_tokens} tokens generated in {generator.seconds:.2f} s: "
        f"{generator.tokens_per_second:.1f} tokens/s ({path})\n"
    )


def _read_stdin(flag: str) -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise HftoolError(f"{flag}: nothing to read; pipe text on stdin or pass a file")
    return read_stdin_text(flag)


def run_generate(
    recipe: GenerateRecipe,
    prompt: str | None,
    input_path: str | None,
    output_path: str | None,
    column: str = "prompt",
    stream: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[dict]:
    """Generate for one prompt (streamed to ``out``) or every prompt of ``input_path`` (JSONL records)."""
    out, err = out or sys.stdout, err or sys.stderr
    recipe.validate()
    if (prompt is None) == (input_path is None):
        raise HftoolError(
            "pass exactly one of --prompt TEXT (an empty prompt generates from the begin-of-text "
            "token) or --input FILE"
        )
    if prompt == "-":
        prompt = _read_stdin("--prompt -").rstrip("\n")
    prompts = [prompt] if input_path is None else read_prompts(input_path, column)
    recipe = dataclasses.replace(recipe, decoding=with_seed(recipe.decoding))
    decoding = recipe.decoding

    from hftool.generation.decoding import PromptResult
    from hftool.generation.loading import context_length
    from hftool.generation.streaming import StopTrimmingStreamer

    model, tokenizer, generator = _prepare(recipe, "generate")
    context = context_length(model, tokenizer)
    if input_path is None:
        ids = generator.encode(prompt)
        generator.check_fits(len(ids), context)
        streams = stream and decoding.num_return_sequences == 1 and decoding.num_beams == 1
        streamer = StopTrimmingStreamer(tokenizer, decoding.stop, out) if streams else None
        (sequences,) = generator.generate([ids], streamer=streamer)
        if streamer is None:
            for number, sequence in enumerate(sequences, start=1):
                if len(sequences) > 1:
                    out.write(f"--- {number} ---\n")
                out.write(sequence.text + "\n")
        results = [PromptResult(prompt, len(ids), sequences)]
    else:
        results = run_prompts(generator, prompts, recipe.batch_size, context, on_batch=_progress(err, len(prompts)))
    records = [result_record(r, decoding.used(), recipe.model.name, i) for i, r in enumerate(results)]
    _write_records(records, output_path, input_path is not None, out)
    _report(generator, len(prompts), "prompt(s)", err)
    return records


def _progress(err: TextIO, total: int):
    """The ``2/3 prompts`` counter, rewritten in place on a terminal; a file or pipe gets nothing (a log of
    carriage returns helps nobody). The last count ends its line."""
    if not (hasattr(err, "isatty") and err.isatty()):
        return None
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        err.write(f"\r{done[0]}/{total} prompts" + ("\n" if done[0] >= total else ""))
        err.flush()

    return progress


def _write_records(records: list[dict], output_path: str | None, to_stdout: bool, out: TextIO) -> None:
    import json

    if output_path:
        write_jsonl(output_path, records)
    elif to_stdout:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _texts_and_references(
    input_path: str | None,
    column: str,
    reference_column: str | None,
    reference_path: str | None,
    one_per_line: bool,
) -> tuple[list[str], list[str] | None]:
    """Inputs from JSONL (a column), a text file (whole, or one per line) or stdin, and references."""
    if input_path and Path(input_path).suffix == ".jsonl":
        texts = read_prompts(input_path, column)
        file = Path(input_path).expanduser()
        references = (
            read_jsonl_column(file, reference_column, "--reference-column") if reference_column else None
        )
        if reference_path:
            raise HftoolError("--reference is for text inputs; with a JSONL --input use --reference-column")
    else:
        if reference_column:
            raise HftoolError("--reference-column needs a JSONL --input")
        if input_path in (None, "-"):
            raw = _read_stdin("--input -")
        else:
            raw = read_input_text(existing_input(input_path, "--input"), f"--input {input_path}")
        texts = _split(raw, one_per_line)
        if not texts:
            raise HftoolError(f"--input {input_path or '-'}: no text to work on (empty or blank)")
        references = None
        if reference_path:
            raw = read_input_text(existing_input(reference_path, "--reference"), f"--reference {reference_path}")
            references = _split(raw, one_per_line)
    if references is not None and len(references) != len(texts):
        raise HftoolError(f"--reference: {len(references)} references for {len(texts)} inputs; give one each")
    return texts, references


def _split(raw: str, one_per_line: bool) -> list[str]:
    if one_per_line:
        return [line.strip() for line in raw.splitlines() if line.strip()]
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as a text-mode read gives
    return [raw.strip()] if raw.strip() else []


def _check_max_context(max_context: int | None) -> None:
    """--max-context must leave room for at least one prompt token and one generated token."""
    if max_context is not None and max_context < 2:
        raise HftoolError(f"--max-context {max_context}: must be at least 2")


def run_summarize(
    recipe: GenerateRecipe,
    input_path: str | None,
    column: str,
    reference_column: str | None,
    reference_path: str | None,
    sentences: int,
    max_context: int | None,
    output_path: str | None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> dict:
    """Summarize each article with ``<article>\\nTL;DR:``; score ROUGE-1/2/L when references are given."""
    out, err = out or sys.stdout, err or sys.stderr
    recipe.validate()
    if sentences < 1:
        raise HftoolError(f"--sentences {sentences}: must be at least 1")
    _check_max_context(max_context)
    articles, references = _texts_and_references(
        input_path, column, reference_column, reference_path, one_per_line=False
    )
    from hftool.generation.prompts import first_sentences, summarization_prompt

    def score(summaries, references):
        from hftool.generation.metrics import rouge

        scores = rouge(summaries, references)
        return scores, "  ".join(f"{k.upper().replace('ROUGE', 'ROUGE-')} {100 * v:.2f}" for k, v in scores.items())

    return _prompt_each(
        recipe, articles, references, max_context, output_path, out, err, command="summarize",
        prompt=summarization_prompt,
        keep=lambda text: first_sentences(text, sentences), score=score,
        fields=("article", "summary", "article_truncated"), settings={"sentences": sentences}, unit="article(s)",
    )


def run_translate(
    recipe: GenerateRecipe,
    text: str | None,
    input_path: str | None,
    column: str,
    reference_column: str | None,
    reference_path: str | None,
    pairs_path: str | None,
    shots: int | None,
    max_context: int | None,
    output_path: str | None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> dict:
    """Translate each sentence with a few-shot ``source = target`` prompt; BLEU/chrF when references given."""
    out, err = out or sys.stdout, err or sys.stderr
    recipe.validate()
    if shots is not None and shots < 0:
        raise HftoolError(f"--shots {shots}: must be >= 0")
    _check_max_context(max_context)
    if text is not None and input_path is not None:
        raise HftoolError("pass the sentence as an argument or --input FILE, not both")
    from hftool.generation.prompts import DEFAULT_EN_FR_PAIRS, first_line, read_pairs, translation_prompt

    pairs = read_pairs(pairs_path) if pairs_path else list(DEFAULT_EN_FR_PAIRS)
    pairs = pairs[:shots] if shots is not None else pairs
    if text is not None:
        if not text.strip():
            raise HftoolError("the sentence to translate is empty")
        if reference_path or reference_column:
            raise HftoolError(
                "references go with --input files; score a single sentence by putting it in one"
            )
        sentences, references = [text.strip()], None
    else:
        sentences, references = _texts_and_references(
            input_path, column, reference_column, reference_path, one_per_line=True
        )

    def score(translations, references):
        from hftool.generation.metrics import bleu_chrf

        scores = bleu_chrf(translations, references)
        return scores, f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}"

    return _prompt_each(
        recipe, sentences, references, max_context, output_path, out, err, command="translate",
        prompt=lambda tokenizer, sentence, context, new: translation_prompt(tokenizer, pairs, sentence, context, new),
        keep=first_line, score=score, fields=("source", "translation", "shots"), settings={}, unit="sentence(s)",
    )


def _prompt_each(recipe, texts, references, max_context, output_path, out, err, *, command, prompt, keep, score,
                 fields, settings, unit) -> dict:
    """What summarize and translate share: one prompt per text, batched generation, the answer cut from each
    output by ``keep``, one line per answer, JSON records, the score against references, the speed report.

    ``prompt(tokenizer, text, context, max_new_tokens)`` returns ``(ids, text, note)``, where ``note`` (article
    truncated, shots kept) is recorded under ``fields[2]``; ``fields[:2]`` name the input and the answer.
    """
    from hftool.generation.loading import context_length

    recipe = dataclasses.replace(recipe, decoding=with_seed(recipe.decoding))
    model, tokenizer, generator = _prepare(recipe, command)
    context = max_context or context_length(model, tokenizer)
    prompts = [prompt(tokenizer, text, context, recipe.decoding.max_new_tokens) for text in texts]
    outputs = generate_in_batches(generator, [ids for ids, _, _ in prompts], recipe.batch_size)
    answers = [keep(seqs[0].text) for seqs in outputs]
    for answer in answers:
        out.write(answer + "\n")
    settings = {**recipe.decoding.used(), **settings, "context": context}
    input_field, answer_field, note_field = fields
    records = []
    for i, (text, (ids, _, note), seqs) in enumerate(zip(texts, prompts, outputs, strict=True)):
        record = {"index": i, input_field: text, answer_field: answers[i], "generated": seqs[0].text,
                  "prompt_tokens": len(ids), note_field: note, "generated_tokens": seqs[0].tokens}
        if references:
            record["reference"] = references[i]
        records.append({**record, "model": recipe.model.name, "settings": settings})
    _write_records(records, output_path, False, out)
    scores = {}
    if references:
        scores, line = score(answers, references)
        out.write(line + "\n")
    _report(generator, len(texts), unit, err)
    return {"records": records, "scores": scores}
