"""What README and the model cards say about loading hftool's folders holds with the installed transformers."""

from __future__ import annotations

import re

import pytest
from helpers import REPO

SOURCES = [REPO / "README.md", REPO / "hftool" / "runs" / "artifacts.py", REPO / "hftool" / "runs" / "squad.py"]
PIPELINE = re.compile(r"pipeline\(\s*\"([a-z-]+)\"")
CLASS = re.compile(r"\b((?:Auto|Bert|GPT2|Bloom)[A-Za-z]*(?:Model|LM|Training|Answering|Tokenizer)[A-Za-z]*)\b")


def _claims(pattern: re.Pattern) -> set[str]:
    return {match for path in SOURCES for match in pattern.findall(path.read_text(encoding="utf-8"))}


def test_every_pipeline_task_named_exists():
    from transformers.pipelines import check_task

    tasks = _claims(PIPELINE) - {"{pipeline_tag}"}
    assert "text-generation" in tasks
    for task in tasks:
        check_task(task)  # raises KeyError for a task transformers does not have (question-answering in 5.x)


def test_model_card_pipeline_tags_exist():
    from transformers.pipelines import check_task

    tags = {tag for name in ("pretrain_causal_lm.py", "pretrain_bert.py")
            for tag in re.findall(r"pretrain_card\(recipe, summary, \"([a-z-]+)\"",
                                  (REPO / "hftool" / "runs" / name).read_text(encoding="utf-8"))}
    assert tags == {"text-generation", "fill-mask"}
    for tag in tags:
        check_task(tag)


def test_every_class_named_exists():
    import transformers

    names = _claims(CLASS)
    assert "AutoModelForQuestionAnswering" in names
    missing = [name for name in names if not hasattr(transformers, name)]
    assert not missing


def test_readme_python_snippet_runs(tiny_gpt2):
    """The README's loading snippet, run as written against a saved hftool-style folder."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert snippets
    for snippet in snippets:
        exec(compile(snippet.replace("runs/demo", str(tiny_gpt2)), "README.md", "exec"), {})


@pytest.mark.parametrize("head", ["question-answering"])
def test_squad_card_loads_with_auto_class(head, tiny_bert, tmp_path):
    """The SQuAD card's snippet: AutoModelForQuestionAnswering on a folder saved with that head."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertForQuestionAnswering

    BertForQuestionAnswering.from_pretrained(tiny_bert).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path)
    from hftool.runs.squad import squad_card
    from hftool.schemas.finetune import SquadRecipe

    recipe = SquadRecipe()
    card = squad_card(recipe, {"steps": 1}, recipe.train.batch_size)
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    scope: dict = {}
    exec(snippet.replace("path/to/this/folder", str(tmp_path)), scope)
    assert isinstance(scope["model"], AutoModelForQuestionAnswering._model_mapping[type(scope["model"].config)])
