"""Quiet by default: hftool prints its own progress and summaries; library chatter needs ``--verbose``.

The choice travels in ``HFTOOL_VERBOSE`` so processes started by ``--num-processes`` inherit it.
"""

from __future__ import annotations

import logging
import os
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
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
