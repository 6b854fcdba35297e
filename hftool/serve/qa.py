"""Extractive question answering for ``POST /v1/qa``: the steps of ``hftool answer`` with the model loaded once.

The answers are those of :func:`hftool.tasks.squad.answer_questions` (same windows, same candidates, same
ranking); only the loading is hoisted out of the per-request path.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from hftool.data.squad import QAExample, WindowSettings


class QAService:
    """A loaded question-answering model and tokenizer (see :func:`hftool.runs.serve.build_served`)."""

    def __init__(self, model, tokenizer, settings: WindowSettings, device, batch_size: int = 32):
        self.settings = settings
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.device = device
        self.model = model.to(device)
        self.model.eval()
        self.lock = threading.Lock()  # one request at a time on the model; they come from a thread pool

    def answer(self, examples: list[QAExample], top_k: int):
        """``top_k`` answers per example, best first (HftoolError for a question too long for a window)."""
        import torch

        from hftool.data.squad import check_windows_fit, encode_windows
        from hftool.tasks.squad import SquadTask, local_batches
        from hftool.tasks.squad_postprocess import rank_answers

        with self.lock:
            check_windows_fit(examples, self.tokenizer, self.settings)
            windows = encode_windows(examples, self.tokenizer, self.settings)
            task = SquadTask(replace(self.settings, n_best=max(self.settings.n_best, top_k)), windows.pad_token_id)
            with torch.no_grad():
                found = task.window_candidates(self.model, local_batches(task, windows, self.batch_size,
                                                                         self.device), windows)
        return [rank_answers(found.get(i, []), e.context, top_k) for i, e in enumerate(examples)]
