"""``hftool serve``'s options: where it listens and the limits that keep one server responsive.

``ServeOptions`` is what ``hftool.runs.serve.run_serve`` takes; the CLI builds its flags from these fields,
so a limit's default, bound and help are written here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hftool.errors import HftoolError
from hftool.schemas.fields import Bound, at_least, check_fields, setting
from hftool.schemas.generate import GenerateRecipe
from hftool.schemas.inference import QAWindowOptions


@dataclass
class ServeOptions:
    recipe: GenerateRecipe = field(default_factory=GenerateRecipe)
    host: str = setting("127.0.0.1", flag="--host", help="Address to listen on; 0.0.0.0 for every interface.")
    port: int = setting(8000, flag="--port", bound=Bound("must be from 0 to 65535", low=0, high=65535),
                        help="Port to listen on.")
    api_key: str | None = None  # --api-key or HFTOOL_API_KEY
    max_batch_size: int = setting(16, flag="--max-batch-size", bound=at_least(1),
                                  help="Sequences decoded together, at most.")
    max_queue: int = setting(64, flag="--max-queue", bound=at_least(1),
                             help="Requests waiting, at most; past it a 503.")
    max_cache_tokens: int | None = setting(
        None, flag="--max-cache-tokens", bound=at_least(1),
        help="Cache the running requests may reserve (prompt + max_tokens per sequence); over it requests wait "
             "(default: batch size x context).")
    prefill_chunk: int = setting(256, flag="--prefill-chunk", bound=at_least(1),
                                 help="Prompt tokens prefilled between two decoding steps, at most.")
    threads: int | None = setting(None, flag="--threads", bound=at_least(1),
                                  help="Torch threads for decoding (default: every core this process may use).")
    pack_weights: bool = setting(True, flag="--pack-weights/--no-pack-weights",
                                 help="Pack the causal LM's linear weights for oneDNN once at load: in bf16 on a CPU "
                                      "with native bf16, in float32 on one not made by Intel (MKL is slow there).")
    max_tokens_cap: int = setting(1024, flag="--max-tokens-cap", bound=at_least(1),
                                  help="Largest max_tokens a request may ask.")
    max_body_bytes: int = 1 << 20
    grace_s: float = 20.0
    log_level: str = "info"
    qa_window: tuple[int, int, int] = QAWindowOptions().as_tuple()  # max_length, doc_stride, max_answer_length
    models: list[str] = field(default_factory=list)  # the --model values (NAME=PATH or PATH); none: the recipe's

    def validate(self) -> None:
        self.recipe.validate()
        beams = self.recipe.decoding.num_beams
        if beams != 1:
            raise HftoolError(f"--num-beams {beams} (decoding.num_beams in the recipe): serve decodes one beam per "
                              "sequence, greedy or sampled, streaming tokens as they come; set it to 1 (beam search: "
                              "hftool generate)")
        check_fields(self)
