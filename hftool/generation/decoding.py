"""Decoding: every strategy goes through ``model.generate`` with a ``GenerationConfig``, except plain greedy
search of a single prompt on GPT-2 or BLOOM, which goes through the decode fast path
(:mod:`hftool.generation.fastpath`, switched off by ``decoding.fast_decode: false`` / ``--no-fast-decode``).

What the fast path guarantees, in float32 and bfloat16 alike: each step's logits are bit-identical to the model's
own forward (``model(input_ids=token, cache=...)``) for the same token and cache, run on the kernels PyTorch
picks by default (the path sets no backend switch), so its tokens are those of a greedy loop over that forward.
The first step of every call is checked against the forward, and where the path cannot run it says so and
``generate`` is used instead. ``model.generate`` calls the same forward and the tests find its tokens too, but
it is the forward, not ``generate``'s loop, that the path is checked against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hftool.errors import HftoolError
from hftool.schemas.generate import DecodingSettings

# generation_config.json keys that do not change which token greedy search picks, so the fast path may run:
# token ids and bookkeeping, plus the strategy and sampling knobs that our GenerationConfig always overrides
# (``hftool pretrain`` saves sampling defaults; greedy search ignores them).
NEUTRAL_GENERATION_KEYS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                           "transformers_version", "max_length", "use_cache", "_from_model_config",
                           "do_sample", "max_new_tokens", "num_beams", "num_return_sequences",
                           "temperature", "top_k", "top_p", "typical_p", "min_p"}
# ... and keys that are harmless while switched off.
SWITCHED_OFF_KEYS = {"output_attentions", "output_hidden_states", "output_scores", "output_logits",
                     "return_dict_in_generate"}


@dataclass
class Sequence:
    """One generated continuation: its text (stop string trimmed off), ids and token count."""

    text: str
    token_ids: list[int]

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class PromptResult:
    prompt: str
    prompt_tokens: int
    sequences: list[Sequence] = field(default_factory=list)


def trim_at_stop(text: str, stops: list[str]) -> str:
    """Cut ``text`` at the earliest stop string; the stop string itself is not kept."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class Generator:
    """Turns prompts into continuations with one model, tokenizer and set of decoding settings."""

    def __init__(self, model, tokenizer, settings: DecodingSettings):
        from hftool.generation.loading import input_device

        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = input_device(model)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.config = self._generation_config()
        self.generated_tokens = 0
        self.seconds = 0.0
        self.paths: set[str] = set()  # how the prompts were decoded: "fast decode" and/or "model.generate"

    def _generation_config(self):
        from transformers import GenerationConfig

        s = self.settings
        fields = dict(
            max_new_tokens=s.max_new_tokens,
            do_sample=s.do_sample,
            num_beams=s.num_beams,
            num_return_sequences=s.num_return_sequences,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if s.do_sample:
            fields.update(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        if s.repetition_penalty != 1.0:
            fields["repetition_penalty"] = s.repetition_penalty
        if s.no_repeat_ngram_size:
            fields["no_repeat_ngram_size"] = s.no_repeat_ngram_size
        if s.stop:
            fields["stop_strings"] = list(s.stop)
        return GenerationConfig(**fields)

    @property
    def uses_fast_path(self) -> bool:
        """Whether a single prompt goes to the fast path first (it may still fall back to ``generate``)."""
        from hftool.generation import fastpath  # imports torch; kept off the CLI's start-up path

        if not (self.settings.fast_decode and self.settings.is_plain_greedy and fastpath.applies(self.model)):
            return False
        model_defaults = self.model.generation_config.to_diff_dict()
        neutral = all(
            key in NEUTRAL_GENERATION_KEYS or (key in SWITCHED_OFF_KEYS and not value)
            for key, value in model_defaults.items()
        )
        return neutral

    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``; an empty prompt is the begin-of-text token alone (unconditional text)."""
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        if ids:
            return ids
        start = self.tokenizer.bos_token_id
        if start is None:
            start = self.tokenizer.eos_token_id
        if start is None:
            raise HftoolError(
                "--prompt is empty and the tokenizer has no begin/end-of-text token to start from"
            )
        return [start]

    def check_fits(self, prompt_tokens: int, context: int, what: str = "the prompt") -> None:
        needed = prompt_tokens + self.settings.max_new_tokens
        if needed > context:
            raise HftoolError(
                f"{what} has {prompt_tokens} tokens; with --max-new-tokens "
                f"{self.settings.max_new_tokens} that is {needed}, more than the model's "
                f"{context} positions; shorten it or lower --max-new-tokens"
            )

    def generate(self, batch: list[list[int]], streamer=None) -> list[list[Sequence]]:
        """Continuations for a batch of token-id prompts (left-padded together), in the batch's order."""
        import torch

        from hftool.generation import fastpath

        started = time.perf_counter()
        new_rows = None
        if len(batch) == 1 and self.uses_fast_path:
            tokens = fastpath.greedy_tokens(self.model, batch[0], self.settings.max_new_tokens, self.eos_ids,
                                            self.device, streamer)
            if tokens is not None:
                new_rows = [tokens]
                self.paths.add("fast decode")
        if new_rows is None:
            with torch.inference_mode():
                new_rows = self._generate(batch, streamer)
            self.paths.add("model.generate")
        self.seconds += time.perf_counter() - started
        per_prompt = self.settings.num_return_sequences
        results = []
        for i in range(len(batch)):
            sequences = [self._sequence(row) for row in new_rows[i * per_prompt : (i + 1) * per_prompt]]
            self.generated_tokens += sum(s.tokens for s in sequences)
            results.append(sequences)
        return results

    def _sequence(self, new_ids: list[int]) -> Sequence:
        """Cut the new ids after the first end-of-text token (what follows is padding) and decode them."""
        for i, token in enumerate(new_ids):
            if token in self.eos_ids:
                new_ids = new_ids[: i + 1]
                break
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return Sequence(trim_at_stop(text, self.settings.stop), new_ids)

    def _generate(self, batch: list[list[int]], streamer) -> list[list[int]]:
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device
        )
        extra = {"tokenizer": self.tokenizer} if self.settings.stop else {}
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self.config,
            streamer=streamer,
            **extra,
        )
        return output[:, width:].tolist()

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0
