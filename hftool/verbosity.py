"""Quiet by default: hftool prints its own progress and summaries; library chatter needs ``--verbose``.

The choice travels in ``HFTOOL_VERBOSE`` so processes started by ``--num-processes`` inherit it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ENV = "HFTOOL_VERBOSE"
LIBRARY_LOGGERS = ("transformers", "accelerate", "datasets", "huggingface_hub", "evaluate")


def verbose() -> bool:
    return os.environ.get(ENV, "") == "1"


def configure(verbose_flag: bool = False) -> None:
    """Set the libraries' log levels before they are imported (their env variables) and after (loggers)."""
    if verbose_flag:
        os.environ[ENV] = "1"
    if verbose():
        return
    for variable in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "HF_HUB_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not sys.stderr.isatty():
        hide_library_progress_bars()
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")


def hide_library_progress_bars() -> None:
    """No carriage-return bars (transformers' "Writing model shards", Hub downloads) in a log file or pipe:
    the Hugging Face variable is read at import, and transformers' switch covers an import that came first."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
