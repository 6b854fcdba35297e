"""Request and response bodies in OpenAI's shapes.

Requests are strict (``extra="forbid"``, no string-to-number coercion) so a misspelt or mistyped field is a 400
naming it, not a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16  # continuations per prompt
MAX_STOPS = 4  # OpenAI's own limit
MAX_PROMPTS = 64  # prompts in one completions request
MAX_LOGPROBS = 5


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """The decoding fields shared by completions and chat; None means the server's default (``--recipe``)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # an extra: OpenAI has none, vLLM and TGI accept it
    repetition_penalty: float | None = Field(None, gt=0)
    n: int = Field(1, ge=1, le=MAX_N)
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
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("the prompt list is empty; give at least one prompt")
            if len(value) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return value


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


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
    question: str | None = None
    context: str | None = None
    questions: list[QAItem] | None = Field(None, min_length=1, max_length=MAX_PROMPTS)
    top_k: int = Field(3, ge=1, le=20)

    def items(self) -> list[QAItem]:
        if self.questions is not None:
            if self.question is not None or self.context is not None:
                raise ValueError("give questions, or question with context, not both")
            return self.questions
        if self.question is None or self.context is None:
            raise ValueError("give question and context (or questions: a list of them)")
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
