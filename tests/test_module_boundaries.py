"""The package's boundaries, read from the source with ``ast``: a task never imports another task, and no module
(a command's above all) reaches for another module's private helper: shared code lives in a module named for it."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "hftool"
TASKS = PACKAGE / "tasks"

# Modules under tasks/ that are not tasks, so tasks may import them; each says why it lives there.
TASK_HELPERS = {
    "labelling": "what classify and ner share: their recipes' model section and batch padding",
    "lm_head_loss": "the chunked LM-head cross-entropy the causal-LM task computes its loss with",
    "squad_postprocess": "SQuAD's answer ranking, part of the squad task (also used by hftool answer and serve)",
}


def imported_modules(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import in ``path``, at any depth (function-local imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-node.level])
            module = f"{package}.{node.module}" if node.module else package
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def test_no_task_imports_another_task():
    tasks = {p.stem for p in TASKS.glob("*.py") if p.stem != "__init__"}
    assert set(TASK_HELPERS) <= tasks, "a helper listed here was removed: drop it from TASK_HELPERS"
    offences = []
    for path in sorted(TASKS.glob("*.py")):
        for line, module, names in imported_modules(path):
            targets = [module] + [f"{module}.{name}" for name in names]
            for target in targets:
                parts = target.split(".")
                if parts[:2] == ["hftool", "tasks"] and len(parts) > 2 and parts[2] in tasks - set(TASK_HELPERS) \
                        and parts[2] != path.stem:
                    offences.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not offences, "a task imports another task; move what they share to a module named for it:\n" + \
        "\n".join(offences)


def test_no_module_imports_a_private_helper_of_another():
    """A command module borrowing ``cli.generate._recipe`` (as serve did) hides a shared step in one command."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for line, module, names in imported_modules(path):
            if module == own or module.split(".")[0] != "hftool":
                continue
            offences += [f"{path.relative_to(REPO)}:{line} imports {module}.{name}" for name in names
                         if name.startswith("_") and not name.startswith("__")]
    assert not offences, "a private helper is used outside its module; make it a public one in a shared " \
        "module:\n" + "\n".join(offences)


def test_the_checks_see_what_they_guard(tmp_path, monkeypatch):
    """The walk finds function-local and relative imports, so neither check passes by not looking."""
    source = tmp_path / "hftool" / "tasks" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from hftool.cli.generate import _recipe\n    from .squad import SquadTask\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert imported_modules(source) == [(2, "hftool.cli.generate", ["_recipe"]),
                                        (3, "hftool.tasks.squad", ["SquadTask"])]


def test_only_the_loading_layer_calls_from_pretrained():
    """Every checkpoint is read through :mod:`hftool.loading` (one error policy, the head checks): a
    ``from_pretrained`` call anywhere else is a second loader."""
    # hftool/adapters.py is the loading layer's adapter half: load_model reaches it for adapter folders, and
    # merging reads the base and the adapter the same way.
    loaders = {PACKAGE / "loading.py", PACKAGE / "adapters.py"}
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in loaders:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "from_pretrained":
                offences.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offences, "load through hftool.loading (load_config, load_tokenizer, load_model):\n" + \
        "\n".join(offences)
