"""What to generate with and how: the typed ``generate`` recipe and its checks.

Every setting is declared once, as a dataclass field whose metadata holds its command-line flag, its help and
its bounds (``setting``). The CLI builds its options from that metadata (``hftool.cli.setting_options``) and
``validate`` checks recipe values and flags alike against it, so a flag, its help and its check cannot drift
apart. This module imports neither torch nor transformers, so the CLI checks every decoding flag before it
loads anything. Precedence, lowest first: the schema defaults below, the recipe file (``--recipe``), the recipe
overrides (``decoding.top_p=0.9``), then the explicit command-line flags (``--top-p 0.9``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from hftool.errors import HftoolError

DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(DType)  # the one list of weight dtypes: recipe type, flag check and loader
DeviceMap = Literal["auto"]
BATCH_SIZE = 8
MAX_SEQUENCES = 64  # beams, or continuations per prompt: each is a full row of the batch
SEED_RANGE = (0, 2**32 - 1)  # what transformers.set_seed takes (numpy's seeding refuses the rest)
MIN_SCALE = 0.01  # smallest temperature / repetition penalty: dividing logits by less overflows to inf and NaN
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "seed")  # decoding fields greedy and beam search ignore


@dataclass(frozen=True)
class Bound:
    """What values a setting accepts, and the words its error gives otherwise.

    ``low``/``high`` bound a number (``low_open``: ``low`` itself is refused); ``choices`` lists the accepted
    values; ``when`` names a boolean setting that must be on for the bound to apply (temperature only matters
    when sampling). ``None`` (left unset) always passes.
    """

    why: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    when: str | None = None

    def holds(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def setting(default: Any = dataclasses.MISSING, *, flag: str, help: str, short: str | None = None,
            bound: Bound | None = None, param: str | None = None, parse: Callable[[str], Any] | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that also declares its command-line option: ``flag`` (``--top-p``, or a
    ``--on/--off`` pair), ``short`` alias, ``help``, ``bound``; ``param`` names the command's parameter when
    it differs from the field (``--model`` sets ``model.name``) and ``parse`` turns the text typed on the
    command line into the field's value when the field is not a plain str/int/float/bool/list
    (``--max-memory cpu=2GiB`` into a mapping)."""
    metadata = {"flag": flag, "short": short, "help": help, "bound": bound, "param": param, "parse": parse}
    return field(default=default, default_factory=default_factory, metadata=metadata)


class SettingError(HftoolError):
    """A setting outside its bound. ``str()`` names the command-line flag; ``field``, ``value`` and ``why`` let
    another front end (the server's request fields) word the same refusal in its own names."""

    def __init__(self, item: dataclasses.Field, value: Any, why: str):
        shown = value if not isinstance(value, list) else ",".join(map(repr, value))
        super().__init__(f"{item.metadata['flag']} {shown}: {why}")
        self.field, self.value, self.why = item.name, value, why


def check_fields(settings: Any) -> None:
    """Check every field of ``settings`` against its ``Bound``, and floats for finiteness, in field order."""
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            _bad(item, value, "must be a finite number")
    for item in dataclasses.fields(settings):
        bound = item.metadata.get("bound")
        if bound and (bound.when is None or getattr(settings, bound.when)) and not bound.holds(
                getattr(settings, item.name)):
            _bad(item, getattr(settings, item.name), bound.why)


@dataclass
class DecodingSettings:
    """How tokens are chosen. Without ``do_sample``, temperature/top-k/top-p are unused (greedy or beam)."""

    max_new_tokens: int = setting(64, flag="--max-new-tokens", short="-n",
                                  help="Tokens to generate per prompt, at most.",
                                  bound=Bound("must be at least 1", low=1))
    do_sample: bool = setting(False, flag="--sample/--greedy",
                              help="Sample from the distribution, or always take the most likely token "
                                   "(greedy/beam).")
    temperature: float = setting(1.0, flag="--temperature", short="-t",
                                 help=f"Sampling temperature, at least {MIN_SCALE}; lower is more conservative.",
                                 bound=Bound(f"must be at least {MIN_SCALE} when sampling; for deterministic output "
                                             "decode greedily (--greedy, or temperature 0 in a request)",
                                             low=MIN_SCALE, when="do_sample"))
    top_k: int = setting(0, flag="--top-k", help="Sample among the k most likely tokens; 0 = off.",
                         bound=Bound("must be >= 0; 0 disables top-k filtering", low=0))
    top_p: float = setting(1.0, flag="--top-p",
                           help="Nucleus sampling: the smallest set of tokens with this much probability, "
                                "in (0, 1].",
                           bound=Bound("must be in (0, 1]; 1 disables nucleus sampling", low=0, low_open=True,
                                       high=1))
    num_beams: int = setting(1, flag="--num-beams",
                             help=f"Beam search width, 1 to {MAX_SEQUENCES}; 1 = no beam search.",
                             bound=Bound(f"must be 1 to {MAX_SEQUENCES} (1 = no beam search)", low=1,
                                         high=MAX_SEQUENCES))
    num_return_sequences: int = setting(1, flag="--num-return-sequences",
                                        help=f"Continuations per prompt, 1 to {MAX_SEQUENCES} (needs --sample, or "
                                             "--num-beams at least as large).",
                                        bound=Bound(f"must be 1 to {MAX_SEQUENCES}", low=1, high=MAX_SEQUENCES))
    repetition_penalty: float = setting(1.0, flag="--repetition-penalty",
                                        help="> 1 makes tokens already in the text less likely; 1 = off.",
                                        bound=Bound(f"must be at least {MIN_SCALE}; 1 disables it",
                                                    low=MIN_SCALE))
    no_repeat_ngram_size: int = setting(0, flag="--no-repeat-ngram-size",
                                        help="Never repeat an n-gram of this size; 0 = off.",
                                        bound=Bound("must be >= 0; 0 disables it", low=0))
    stop: list[str] = setting(flag="--stop", default_factory=list,
                              help="Stop at this string (repeatable); it is trimmed from the output.")
    seed: int | None = setting(None, flag="--seed",
                               help="Random seed for sampling, 0 to 2**32-1; without one a fresh seed is drawn "
                                    "and recorded.",
                               bound=Bound(f"must be {SEED_RANGE[0]} to {SEED_RANGE[1]} (2**32-1)",
                                           low=SEED_RANGE[0], high=SEED_RANGE[1]))
    fast_decode: bool = setting(True, flag="--fast-decode/--no-fast-decode",
                                help="Greedy search of one prompt through hftool's fused GPT-2/BLOOM step (on by "
                                     "default; same tokens as model.generate). --no-fast-decode always uses "
                                     "model.generate.")

    def validate(self) -> None:
        """Reject settings transformers would refuse late, or silently misread, naming the flag to fix."""
        check_fields(self)
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            _bad(
                _field(self, "num_return_sequences"),
                self.num_return_sequences,
                f"greedy/beam search returns at most --num-beams ({self.num_beams}) different sequences; "
                "raise --num-beams or pass --sample",
            )
        if any(not s for s in self.stop):
            _bad(_field(self, "stop"), self.stop, "stop strings must not be empty")

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


def parse_max_memory(text: str) -> dict:
    """``cpu=2GiB,0=20GiB`` → ``{"cpu": "2GiB", 0: "20GiB"}`` (GPU indices as ints, as Accelerate wants)."""
    budget: dict = {}
    for item in text.split(","):
        device, sep, size = item.strip().partition("=")
        if not sep or not device or not size:
            raise HftoolError(f"--max-memory {text}: expected device=size pairs, e.g. cpu=2GiB,0=20GiB")
        budget[int(device) if device.isdigit() else device] = size
    return budget


@dataclass
class ModelSettings:
    """Which model and how to place it. ``device_map: auto`` spreads a large model over GPUs, CPU and disk."""

    name: str | None = setting(None, flag="--model", short="-m", param="model",
                               help="Causal LM: a local folder, a Hub id or an alias (gpt2, distilgpt2, "
                                    "bloom-560m, ...).")
    dtype: DType = setting("auto", flag="--dtype",
                           help="Weights dtype: auto (the checkpoint's), float32, bfloat16 or float16.",
                           bound=Bound(f"must be one of {', '.join(DTYPES)}", choices=DTYPES))
    device_map: DeviceMap | None = setting(None, flag="--device-map",
                                           help="'auto': spread a model too large for one device over GPUs, CPU "
                                                "and disk (Accelerate big-model inference).",
                                           bound=Bound("only 'auto' is supported (or leave it out)",
                                                       choices=get_args(DeviceMap)))
    offload_folder: str | None = setting(None, flag="--offload-folder",
                                         help="With --device-map auto: folder for the weights that fit on no "
                                              "device.")
    max_memory: dict | None = setting(None, flag="--max-memory", parse=parse_max_memory,
                                      help="With --device-map auto: memory per device, e.g. cpu=8GiB,0=20GiB; the "
                                           "rest is offloaded to disk.")
    trust_remote_code: bool = setting(False, flag="--trust-remote-code",
                                      help="Allow the model's own Python code from the Hub (only for models you "
                                           "trust).")


@dataclass
class GenerateRecipe:
    """A ``hftool generate`` run: the model, the decoding settings and the batch size for --input files."""

    model: ModelSettings = field(default_factory=ModelSettings)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    batch_size: int = setting(BATCH_SIZE, flag="--batch-size", short="-b",
                              help=f"Prompts per batch (grouped by length, left-padded). Default {BATCH_SIZE}.",
                              bound=Bound("must be at least 1", low=1))

    def validate(self) -> None:
        check_fields(self.model)
        self.decoding.validate()
        check_fields(self)
        if (self.model.offload_folder or self.model.max_memory) and self.model.device_map != "auto":
            raise HftoolError("--offload-folder and --max-memory only apply with --device-map auto")


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


def _field(settings: Any, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(settings) if f.name == name)


def _bad(item: dataclasses.Field, value, why: str):
    raise SettingError(item, value, why)
