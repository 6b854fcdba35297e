"""Request and response bodies in OpenAI's shapes.

Requests are strict (``extra="forbid"``, no string-to-number coercion, no Infinity or NaN) so a misspelt or
mistyped field is a 400 naming it, not a silently ignored setting. The decoding fields' values are checked where
``hftool generate`` checks its flags, by the bounds declared once in :mod:`hftool.schemas.generate`, on the
settings the request will decode with (:func:`hftool.serve.app._settings`); the limits here are the server's own
(prompts per request, continuations, stop strings).
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16  # continuations per prompt
MAX_STOPS = 4  # OpenAI's own limit
MAX_PROMPTS = 64  # prompts in one completions request
MAX_LOGPROBS = 5


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class MissingField(ValueError):
    """A request that leaves out a field another field needs; ``param`` names the one to add."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """The decoding fields shared by completions and chat; None means the server's default (``--recipe``)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None  # 0: greedy; above 0: sampling at this temperature
    top_p: float | None = None
    top_k: int | None = None  # an extra: OpenAI has none, vLLM and TGI accept it
    repetition_penalty: float | None = None
    n: int | None = Field(None, le=MAX_N)  # None: the recipe's num_return_sequences (1 by default)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None:
            if len(stops) > MAX_STOPS:
                raise ValueError(f"at most {MAX_STOPS} stop strings")
            if any(not s for s in stops):
                raise ValueError("stop strings must not be empty")
        return stops


class CompletionRequest(Sampling):
    """``prompt`` as OpenAI takes it: a text, a list of texts, one prompt of token ids, or a list of those."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("the prompt list is empty; give at least one prompt")
            if not isinstance(value[0], int) and len(value) > MAX_PROMPTS:  # a list of ints is one prompt
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return value

    def prompt_list(self) -> list[str | list[int]]:
        """Each prompt alone: a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class Message(Strict):
    """A chat message; ``content`` is a text or OpenAI's list of content parts, of which only text parts are
    taken (joined by newlines, as vLLM does): an image or audio part is refused, naming its type."""

    role: Literal["system", "user", "assistant"]
    content: str | list[dict]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value):
        if isinstance(value, str):
            return value
        texts = []
        for index, part in enumerate(value):
            kind = part.get("type")
            if kind != "text":
                raise ValueError(f"content part {index} is of type {json.dumps(kind)}; this server takes text "
                                 "only: give parts as {\"type\": \"text\", \"text\": \"...\"} or content as a string")
            if not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
                raise ValueError(f"content part {index}: a text part is {{\"type\": \"text\", \"text\": "
                                 "\"...\"}, with a string and no other field")
            texts.append(part["text"])
        return "\n".join(texts)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class QAItem(Strict):
    question: str = Field(min_length=1)
    context: str = Field(min_length=1)
    id: str | None = None


class QARequest(Strict):
    """One question (``question`` + ``context``) or a batch (``questions``), as ``hftool answer`` takes."""

    model: str | None = None
    question: str | None = Field(None, min_length=1)
    context: str | None = Field(None, min_length=1)
    questions: list[QAItem] | None = Field(None, min_length=1, max_length=MAX_PROMPTS)
    top_k: int = Field(3, ge=1, le=20)

    def items(self) -> list[QAItem]:
        """The questions to answer; :class:`MissingField` names the field to add or remove."""
        if self.questions is not None:
            if self.question is not None or self.context is not None:
                given = "question" if self.question is not None else "context"
                raise MissingField("give questions, or question with context, not both", given)
            return self.questions
        if self.question is None:
            raise MissingField("give question and context (or questions: a list of them)", "question")
        if self.context is None:
            raise MissingField("give context: the passage to find the answer to 'question' in", "context")
        return [QAItem(question=self.question, context=self.context, id="1")]


# ---- responses -------------------------------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LogProbs(BaseModel):
    """Completions' logprobs: the chosen tokens, their log-probabilities, and the top alternatives."""

    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogProb(BaseModel):
    token: str
    logprob: float


class TokenLogProb(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[TopLogProb] = []


class ChatLogProbs(BaseModel):
    content: list[TokenLogProb]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hftool"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class QAAnswer(BaseModel):
    text: str
    score: float
    start: int
    end: int


class QAResult(BaseModel):
    id: str | None
    question: str
    answers: list[QAAnswer]


class QAResponse(BaseModel):
    object: Literal["qa"] = "qa"
    model: str
    results: list[QAResult]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- encoder endpoints: /v1/classify, /v1/tag, /v1/embeddings ---------------------------------------------

MAX_INPUTS = 256  # texts in one classify, tag or embeddings request


def _input_list(value, what: str):
    if isinstance(value, list):
        if not value:
            raise ValueError(f"the input list is empty; give at least one {what}")
        if len(value) > MAX_INPUTS and not isinstance(value[0], int):  # a list of ints is one input
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
    return value


class TextsRequest(Strict):
    """``input``: a text or a list of texts, as ``hftool classify`` and ``hftool tag`` take them."""

    model: str | None = None
    input: str | list[str]

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        _input_list(value, "text")
        texts = [value] if isinstance(value, str) else value
        if any(not text.strip() for text in texts):
            raise ValueError("a text is empty; give some text")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingRequest(Strict):
    """OpenAI's embeddings request: ``input`` a text, a list of texts, one list of token ids, or a list of those."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, value):
        _input_list(value, "input")
        inputs = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        if any(len(item) == 0 or (isinstance(item, str) and not item.strip()) for item in inputs):
            raise ValueError("an input is empty; give some text or token ids")
        return value

    def inputs(self) -> list[str | list[int]]:
        """Each input alone: a text or a list of token ids."""
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return [self.input]
        return list(self.input)


class LabelResult(BaseModel):
    index: int
    text: str
    label: str
    score: float
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["classification"] = "classification"
    model: str
    results: list[LabelResult]


class Entity(BaseModel):
    type: str
    text: str
    start: int
    end: int
    score: float


class TagResult(BaseModel):
    index: int
    text: str
    entities: list[Entity]


class TagResponse(BaseModel):
    object: Literal["tagging"] = "tagging"
    model: str
    results: list[TagResult]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 with encoding_format "base64"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
