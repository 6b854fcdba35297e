"""The embedded default corpus: real English assembled from this Python's own documentation.

It exists offline on every machine and needs no download: the language reference topics that ``pydoc``
ships (``pydoc_data.topics``) and the docstrings of the standard library, read with ``ast`` (no module is
imported, so nothing runs). One document per docstring or topic, in a fixed order, so the corpus is the
same on every run of the same Python version.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
import sysconfig
from pathlib import Path

from hftool.loading import cache_dir

SKIPPED_PARTS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
MIN_DOC_CHARS = 80


def _stdlib_docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOC_CHARS:
                    docs.append(doc.strip())
    return docs


def python_docs_documents() -> list[str]:
    """Every document of the corpus: pydoc topics first, then docstrings."""
    return list(_documents())


@functools.cache
def _documents() -> tuple[str, ...]:
    """Parsing the standard library takes seconds: once per process."""
    from pydoc_data.topics import topics

    return tuple(topics[key].strip() for key in sorted(topics)) + tuple(_stdlib_docstrings())


def python_docs_file() -> Path:
    """The corpus as one text file (documents separated by blank lines), built once and cached."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    path = cache_dir() / f"python-docs-{version}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(doc.replace("\n\n", "\n") for doc in python_docs_documents()) + "\n"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path
