"""The encoder endpoints: ``POST /v1/classify``, ``/v1/tag``, ``/v1/qa`` and ``/v1/embeddings``.

Each model runs in a worker thread, off the event loop, one call at a time; requests that arrive while it runs are
answered together by its next call (:class:`Coalescer`), so concurrent requests share forward passes. Labels,
entities and answers come from the code of ``hftool classify``, ``hftool tag`` and ``hftool answer``; embeddings
are mean-pooled over the attention mask and L2-normalised, as sentence-transformers computes them for
all-MiniLM-L6-v2.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from fastapi import APIRouter

from hftool.errors import HftoolError
from hftool.serve import schemas as s
from hftool.serve.errors import ApiError


class Coalescer:
    """Runs ``run(items, key)`` in a worker thread of its own, one call at a time. Requests that wait meanwhile are run
    together in the next call: those with the first one's ``key`` (a setting the whole call shares), up to
    ``max_items`` items. Where a combined call fails, each of its requests runs alone, so only a request whose
    own inputs fail gets the error."""

    def __init__(self, run, max_items: int = s.MAX_INPUTS):
        from concurrent.futures import ThreadPoolExecutor

        from hftool.serve.scheduler import claim_threads, default_threads

        self.run = run
        self.max_items = max_items
        self.pending: list[tuple[object, list, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None
        # one thread of its own, with every core: one OpenMP team per model, not one per pool thread it lands on
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="hftool-encoder", initializer=claim_threads,
                                         initargs=(default_threads(),))

    async def _call(self, items: list, key):
        return await asyncio.get_running_loop().run_in_executor(self.thread, self.run, items, key)

    async def submit(self, items: list, key=None) -> list:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((key, items, future))
        if self.worker is None or self.worker.done():  # a task of its own: a client hanging up stops no one else
            self.worker = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[object, list, asyncio.Future]]:
        key, taken, count, rest = self.pending[0][0], [], 0, []
        for entry in self.pending:
            if entry[0] == key and (not taken or count + len(entry[1]) <= self.max_items):
                taken.append(entry)
                count += len(entry[1])
            else:
                rest.append(entry)
        self.pending = rest
        return taken

    async def _drain(self) -> None:
        while self.pending:
            group = [entry for entry in self._take() if not entry[2].done()]  # done: its client hung up
            if not group:
                continue
            try:
                results = await self._call([item for _, items, _ in group for item in items], group[0][0])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][2], error=exc)
                    continue
                for key, items, future in group:
                    try:
                        _settle(future, await self._call(items, key))
                    except Exception as alone:
                        _settle(future, error=alone)
                continue
            start = 0
            for _, items, future in group:
                _settle(future, results[start:start + len(items)])
                start += len(items)


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Labeller:
    """A sequence- or token-classification model (``kind`` "classify" or "tag"): ``hftool classify``'s labels and
    scores or ``hftool tag``'s entities, with those commands' default batch size and length limit."""

    def __init__(self, kind: str, model, tokenizer):
        from hftool.schemas.inference import PredictOptions

        options = PredictOptions()
        self.kind, self.model, self.tokenizer = kind, model.eval(), tokenizer
        self.batch_size = options.batch_size
        self.max_length = options.text_max_length if kind == "classify" else options.tag_max_length

    def run(self, texts: list[str], key=None) -> list[dict]:
        if self.kind == "classify":
            from hftool.runs.classify import classify_loaded as predict
            from hftool.runs.classify import label_record as record
        else:
            from hftool.runs.ner import entity_record as record
            from hftool.runs.ner import tag_loaded as predict
        results, _, _ = predict(self.model, self.tokenizer, texts, self.max_length, self.batch_size)
        return [record(text, result) for text, result in zip(texts, results, strict=True)]


class Embedder:
    """An encoder's sentence embeddings: the mean of the last hidden states over the attention mask, L2-normalised
    (sentence-transformers' Pooling(mean) + Normalize), texts truncated to ``max_length`` tokens."""

    kind = "embed"

    def __init__(self, model, tokenizer, max_length: int):
        from hftool.schemas.inference import PredictOptions

        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, PredictOptions().batch_size
        self.dimensions = model.config.hidden_size
        self.vocab_size = model.get_input_embeddings().num_embeddings

    def run(self, inputs: list[str | list[int]], key=None) -> list[tuple[list[float], int]]:
        """Each input's embedding and its number of tokens; token-id inputs are taken as given."""
        import torch
        import torch.nn.functional as F

        texts = [item for item in inputs if isinstance(item, str)]
        encoded = iter(self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
                       if texts else [])
        ids = [next(encoded) if isinstance(item, str) else list(item) for item in inputs]
        pad = self.tokenizer.pad_token_id or 0
        results = []
        with torch.no_grad():
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start:start + self.batch_size]
                width = max(len(row) for row in chunk)
                input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in chunk], device=self.model.device)
                mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk],
                                    device=self.model.device)
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                vectors = F.normalize(pooled, p=2, dim=1)
                results.extend((vector, len(row)) for vector, row in zip(vectors.cpu().tolist(), chunk, strict=True))
        return results

    def check_token_ids(self, ids: list[int], param: str) -> None:
        bad = next((token for token in ids if not 0 <= token < self.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"'{param}' holds the token id {bad}; this model's ids are 0 to {self.vocab_size - 1}",
                           param, "invalid_token_id")
        if len(ids) > self.max_length:
            raise ApiError(400, f"'{param}' is {len(ids)} tokens, more than this model's {self.max_length}; "
                           "shorten it (texts are truncated, token ids are not)", param, "context_length_exceeded")


def embedding_length(name_or_path: str, model, tokenizer) -> int:
    """The tokens an embedding reads: sentence-transformers' ``max_seq_length`` where the folder (or the Hub
    repository's cached files) has its config (256 for all-MiniLM-L6-v2), else the tokenizer's and the model's
    limit."""
    config = Path(name_or_path) / "sentence_bert_config.json"
    if not config.is_file() and not Path(name_or_path).exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, config.name)
        config = Path(cached) if isinstance(cached, str) else config
    if config.is_file():
        try:
            return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
        except (ValueError, KeyError, TypeError) as exc:
            raise HftoolError(f"--model {name_or_path}: {config.name} has no readable max_seq_length ({exc}); "
                              "fix or remove it") from None
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return min(limit for limit in limits if limit and limit < 1_000_000) if any(limits) else 512


def router(models) -> APIRouter:
    """The encoder endpoints over ``models`` (a :class:`~hftool.serve.registry.Registry`)."""
    routes = APIRouter()
    calls = {item.name: Coalescer(item.encoder.run) for item in models.served if item.encoder is not None}
    calls.update({item.name: Coalescer(lambda examples, top_k, qa=item.qa: qa.answer(examples, top_k))
                  for item in models.served if item.qa is not None})

    @routes.post("/v1/classify")
    async def classify(body: s.TextsRequest) -> s.ClassifyResponse:
        served = models.pick(body.model, "classify")
        records = await _answer(calls[served.name].submit(body.texts()), "input")
        return s.ClassifyResponse(model=served.name, results=[
            s.LabelResult(index=i, **record) for i, record in enumerate(records)])

    @routes.post("/v1/tag")
    async def tag(body: s.TextsRequest) -> s.TagResponse:
        served = models.pick(body.model, "tag")
        records = await _answer(calls[served.name].submit(body.texts()), "input")
        return s.TagResponse(model=served.name, results=[
            s.TagResult(index=i, **record) for i, record in enumerate(records)])

    @routes.post("/v1/embeddings")
    async def embeddings(body: s.EmbeddingRequest) -> s.EmbeddingResponse:
        served = models.pick(body.model, "embed")
        embedder = served.encoder
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise ApiError(400, f"'dimensions' = {body.dimensions}: {served.name} gives embeddings of "
                           f"{embedder.dimensions} dimensions only; leave the field out", "dimensions",
                           "invalid_value")
        inputs = body.inputs()
        for i, item in enumerate(inputs):
            if isinstance(item, list):
                embedder.check_token_ids(item, "input" if len(inputs) == 1 else f"input.{i}")
        found = await _answer(calls[served.name].submit(inputs), "input")
        tokens = sum(count for _, count in found)
        return s.EmbeddingResponse(model=served.name, usage=s.EmbeddingUsage(prompt_tokens=tokens,
                                                                             total_tokens=tokens), data=[
            s.Embedding(index=i, embedding=_encoded(vector, body.encoding_format))
            for i, (vector, _) in enumerate(found)])

    @routes.post("/v1/qa")
    async def qa(body: s.QARequest) -> s.QAResponse:
        from hftool.data.squad import QAExample

        served = models.pick(body.model, "qa")
        try:
            items = body.items()
        except s.MissingField as exc:
            raise ApiError(400, str(exc), exc.param) from None
        examples = [QAExample(id=item.id or str(i + 1), question=item.question, context=item.context)
                    for i, item in enumerate(items)]
        found = await _answer(calls[served.name].submit(examples, key=body.top_k), "question")
        return s.QAResponse(model=served.name, results=[
            s.QAResult(id=item.id, question=e.question, answers=[
                s.QAAnswer(text=a.text, score=round(a.probability, 4), start=a.start_char, end=a.end_char)
                for a in answers])
            for item, e, answers in zip(items, examples, found, strict=True)])

    return routes


async def _answer(call, param: str):
    """A model call's results; hftool's own refusal of an input (a question too long for a window) is a 400."""
    try:
        return await call
    except HftoolError as exc:
        raise ApiError(400, str(exc), param) from None


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
