"""``hftool answer``: answer questions about a text with an extractive question-answering model."""

from __future__ import annotations

import json

import typer

from hftool.cli.options import QA_MODEL
from hftool.cli.setting_options import option
from hftool.schemas.inference import PredictOptions, QAWindowOptions


def answer(
    model: str = QA_MODEL,
    question: str = typer.Option(None, "--question", "-q", show_default=False, help="The question."),
    context: str = typer.Option(None, "--context", "-c", show_default=False,
                                help="The text holding the answer."),
    file: str = typer.Option(None, "--file", "-f", show_default=False,
                             help="JSONL of {\"question\", \"context\"} (\"id\" optional) instead of "
                                  "--question/--context."),
    top_k: int = option(PredictOptions, "top_k"),
    max_length: int = option(QAWindowOptions, "max_length"),
    doc_stride: int = option(QAWindowOptions, "doc_stride"),
    max_answer_length: int = option(QAWindowOptions, "max_answer_length"),
    batch_size: int = option(PredictOptions, "batch_size"),
    as_json: bool = option(PredictOptions, "as_json"),
) -> None:
    """Answer a question from a context: the top answers with their scores and character spans.

    Scores are probabilities among the best candidate spans; a span gives the answer's first character
    and the character after its last one, as offsets into the context.

    Examples:

      hftool answer -m runs/squad-minilm -q "Who won Super Bowl 50?" -c "The Denver Broncos won it."

      hftool answer --model runs/squad-minilm --file questions.jsonl --json
    """
    from hftool.data.squad import QAExample, WindowSettings, read_questions_file
    from hftool.errors import HftoolError
    from hftool.runs.squad import answer_questions

    if file is not None:
        if question is not None or context is not None:
            raise HftoolError("give --file, or --question with --context, not both")
        examples = read_questions_file(file)
    elif question is None or context is None:
        raise HftoolError("give --question and --context (or --file with one JSON object per line)")
    elif not question.strip() or not context.strip():
        raise HftoolError("--question and --context must not be empty")
    else:
        examples = [QAExample(id="1", question=question, context=context)]
    settings = WindowSettings(max_length, doc_stride, max_answer_length, prefix="--")
    results = answer_questions(model, examples, settings, top_k, batch_size)
    for example, answers in zip(examples, results, strict=True):
        if as_json:
            typer.echo(json.dumps({"id": example.id, "question": example.question, "answers": [
                {"text": a.text, "score": round(a.probability, 4), "start": a.start_char, "end": a.end_char}
                for a in answers]}, ensure_ascii=False))
            continue
        typer.echo(f"Q: {example.question}")
        if not answers:
            typer.echo("   (no answer span found)")
        for rank, a in enumerate(answers, start=1):
            typer.echo(f"   {rank}. {a.text!r}  score {a.probability:.3f}  chars {a.start_char}-{a.end_char}")
