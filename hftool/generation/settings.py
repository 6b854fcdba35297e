"""What to generate with and how: the typed ``generate`` recipe and its checks.

This module imports neither torch nor transformers, so the CLI checks every decoding flag before it loads
anything. Precedence, lowest first: the schema defaults below, the recipe file (``--recipe``), the recipe
overrides (``decoding.top_p=0.9``), then the explicit command-line flags (``--top-p 0.9``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from hftool.errors import HftoolError

DType = Literal["auto", "float32", "bfloat16", "float16"]

# The command-line flag of each decoding field, named in every error message.
FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "do_sample": "--sample/--greedy",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "num_beams": "--num-beams",
    "num_return_sequences": "--num-return-sequences",
    "repetition_penalty": "--repetition-penalty",
    "no_repeat_ngram_size": "--no-repeat-ngram-size",
    "stop": "--stop",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "fast_decode": "--fast-decode/--no-fast-decode",
}


@dataclass
class DecodingSettings:
    """How tokens are chosen. Without ``do_sample``, temperature/top-k/top-p are unused (greedy or beam)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    num_beams: int = 1
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already in the text
    no_repeat_ngram_size: int = 0  # 0 = off; n forbids repeating any n-gram
    stop: list[str] = field(default_factory=list)  # generation ends at the first of these; it is trimmed off
    seed: int | None = None  # None: a fresh seed, recorded in the output so the run can be repeated
    fast_decode: bool = True  # greedy search of one prompt through hftool's fused GPT-2/BLOOM step (same tokens)

    def validate(self) -> None:
        """Reject settings transformers would refuse late, or silently misread, naming the flag to fix."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                _bad(item.name, value, "must be a finite number")
        if self.max_new_tokens <= 0:
            _bad("max_new_tokens", self.max_new_tokens, "must be at least 1")
        if self.num_beams < 1:
            _bad("num_beams", self.num_beams, "must be at least 1 (1 = no beam search)")
        if self.num_return_sequences < 1:
            _bad("num_return_sequences", self.num_return_sequences, "must be at least 1")
        if self.do_sample and self.temperature <= 0:
            _bad(
                "temperature",
                self.temperature,
                "must be > 0 when sampling; use --greedy for deterministic output",
            )
        if not 0 < self.top_p <= 1:
            _bad("top_p", self.top_p, "must be in (0, 1]; 1 disables nucleus sampling")
        if self.top_k < 0:
            _bad("top_k", self.top_k, "must be >= 0; 0 disables top-k filtering")
        if self.repetition_penalty <= 0:
            _bad("repetition_penalty", self.repetition_penalty, "must be > 0; 1 disables it")
        if self.no_repeat_ngram_size < 0:
            _bad("no_repeat_ngram_size", self.no_repeat_ngram_size, "must be >= 0; 0 disables it")
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            _bad(
                "num_return_sequences",
                self.num_return_sequences,
                f"greedy/beam search returns at most --num-beams ({self.num_beams}) different sequences; "
                "raise --num-beams or pass --sample",
            )
        if any(not s for s in self.stop):
            _bad("stop", self.stop, "stop strings must not be empty")

    @property
    def is_plain_greedy(self) -> bool:
        """Greedy search with no logits processors: the case the decode fast path handles exactly."""
        return (
            not self.do_sample
            and self.num_beams == 1
            and self.repetition_penalty == 1.0
            and self.no_repeat_ngram_size == 0
            and not self.stop
        )

    def used(self) -> dict:
        """The settings that shape the output, for the JSONL records (sampling knobs only when sampling)."""
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            out.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)
        out.update(
            num_beams=self.num_beams,
            num_return_sequences=self.num_return_sequences,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            stop=list(self.stop),
        )
        return out


@dataclass
class ModelSettings:
    """Which model and how to place it. ``device_map: auto`` spreads a large model over GPUs, CPU and disk."""

    name: str | None = None  # folder, Hub id or alias (gpt2, bloom-560m, ...)
    dtype: DType = "auto"  # auto = the checkpoint's own dtype
    device_map: Literal["auto"] | None = None  # None: the whole model on one device (CUDA if present)
    offload_folder: str | None = None  # where device_map=auto puts weights that fit nowhere else
    max_memory: dict | None = None  # device_map=auto budget per device, e.g. {cpu: 2GiB, 0: 20GiB}
    trust_remote_code: bool = False


@dataclass
class GenerateRecipe:
    """A ``hftool generate`` run: the model, the decoding settings and the batch size for --input files."""

    model: ModelSettings = field(default_factory=ModelSettings)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    batch_size: int = 8

    def validate(self) -> None:
        self.decoding.validate()
        if self.batch_size < 1:
            _bad("batch_size", self.batch_size, "must be at least 1")
        if (self.model.offload_folder or self.model.max_memory) and self.model.device_map != "auto":
            raise HftoolError("--offload-folder and --max-memory only apply with --device-map auto")


def parse_max_memory(text: str) -> dict:
    """``cpu=2GiB,0=20GiB`` → ``{"cpu": "2GiB", 0: "20GiB"}`` (GPU indices as ints, as Accelerate wants)."""
    budget: dict = {}
    for item in text.split(","):
        device, sep, size = item.strip().partition("=")
        if not sep or not device or not size:
            raise HftoolError(f"--max-memory {text}: expected device=size pairs, e.g. cpu=2GiB,0=20GiB")
        budget[int(device) if device.isdigit() else device] = size
    return budget


def apply_flags(recipe: GenerateRecipe, **flags) -> GenerateRecipe:
    """Overlay the command-line flags the user actually passed (not None) on the recipe."""
    decoding = {k: v for k, v in flags.items() if v is not None and k in FIELDS_OF_DECODING}
    model = {k: v for k, v in flags.items() if v is not None and k in FIELDS_OF_MODEL}
    recipe = dataclasses.replace(
        recipe,
        model=dataclasses.replace(recipe.model, **model),
        decoding=dataclasses.replace(recipe.decoding, **decoding),
    )
    if flags.get("batch_size") is not None:
        recipe = dataclasses.replace(recipe, batch_size=flags["batch_size"])
    return recipe


FIELDS_OF_DECODING = {f.name for f in dataclasses.fields(DecodingSettings)}
FIELDS_OF_MODEL = {f.name for f in dataclasses.fields(ModelSettings)}


def _bad(name: str, value, why: str):
    shown = value if not isinstance(value, list) else ",".join(map(repr, value))
    raise HftoolError(f"{FLAGS[name]} {shown}: {why}")
