"""Many prompts: read them, group them by length into batches, and give the results back in input order."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from hftool.data.files import existing_input, read_input_text
from hftool.errors import HftoolError
from hftool.generation.decoding import Generator, PromptResult, Sequence


def read_prompts(path: str, column: str = "prompt", flag: str = "--input") -> list[str]:
    """Prompts from a ``.jsonl`` file (field ``column`` of each record) or a text file (one per line)."""
    file = existing_input(path, flag)
    if file.suffix == ".jsonl":
        rows = read_jsonl_column(file, column, flag)
    else:
        rows = [line for line in read_input_text(file, f"{flag} {path}").splitlines() if line.strip()]
    if not rows:
        raise HftoolError(f"{flag} {path}: no usable rows (the file is empty or every line is blank)")
    return rows


def read_jsonl_column(file: Path, column: str, flag: str) -> list[str]:
    """The string field ``column`` of every record; blank lines are skipped, malformed ones refused."""
    values = []
    for number, line in enumerate(read_input_text(file, f"{flag} {file}").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HftoolError(f"{flag} {file}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise HftoolError(
                f"{flag} {file}:{number}: no string field '{column}'; choose the field with --column"
            )
        values.append(record[column])
    return values


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate_in_batches(
    generator: Generator,
    encoded: list[list[int]],
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Sequence]]:
    """Continuations of every token-id prompt, in length-sorted batches, returned in the prompts' order."""
    results: list[list[Sequence]] = [[] for _ in encoded]
    for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size):
        outputs = generator.generate([encoded[i] for i in batch])
        for i, sequences in zip(batch, outputs, strict=True):
            results[i] = sequences
        if on_batch is not None:
            on_batch(len(batch))
    return results


def run_prompts(
    generator: Generator,
    prompts: list[str],
    batch_size: int,
    context: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[PromptResult]:
    """Encode, check each prompt fits the context, and generate for all of them in batches."""
    encoded = [generator.encode(p) for p in prompts]
    for number, ids in enumerate(encoded, start=1):
        generator.check_fits(len(ids), context, what=f"prompt {number}")
    outputs = generate_in_batches(generator, encoded, batch_size, on_batch)
    return [PromptResult(p, len(ids), seqs) for p, ids, seqs in zip(prompts, encoded, outputs, strict=True)]


def result_record(result: PromptResult, settings: dict, model: str, index: int) -> dict:
    """One JSONL record: the prompt, the generated text, token counts and the settings that produced it."""
    first, *others = result.sequences
    record = {
        "index": index,
        "prompt": result.prompt,
        "generated": first.text,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": first.tokens,
    }
    if others:
        record["alternatives"] = [{"generated": s.text, "generated_tokens": s.tokens} for s in others]
    record.update(model=model, settings=settings)
    return record


def write_jsonl(path: str, records: list[dict]) -> None:
    """Write to a temporary file beside ``path``, then rename: no half-written output."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, file)
