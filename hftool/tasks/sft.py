"""Instruction / chat fine-tuning (``finetune sft``) of a causal LM: conversations to token ids through the chat
template, the loss on the assistant's tokens only, packing, and evaluation.

Masking follows the template itself: each assistant turn's characters are found by rendering the conversation up
to that turn with and without it (the generation prompt, then the answer and its end-of-turn marker), so any
template that renders prefix by prefix works; tokens starting inside those characters are the targets. The
tokenizer's end-of-text token is appended after the last turn (a target when that turn is the assistant's), so
generation learns to stop. Packed rows hold several conversations, each with positions restarting at 0 and no
attention mask: transformers then masks attention block-diagonally per conversation (``find_packed_sequence_
indices``), so no conversation sees another and the loss equals the unpacked loss (tested).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hftool.data.sft import Conversation
from hftool.errors import HftoolError
from hftool.tasks.lm_head_loss import NO_LOGITS, head_weight, linear_cross_entropy_sum

IGNORE_INDEX = -100
PAD_TO_MULTIPLE_OF = 8
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Models whose forward turns per-conversation position_ids into a block-diagonal attention mask (checked by the
# tests); BLOOM's ALiBi reads the 2-D attention mask instead, so packing there would leak across conversations.
PACKING_MODELS = ("gpt2",)


def use_chat_template(tokenizer, choice: str) -> list[str]:
    """Give ``tokenizer`` the chat template to train with: its own (``auto``), else ChatML; returns the ChatML
    special tokens that had to be added to the vocabulary (the model's embeddings must grow by as many)."""
    if choice == "auto" and tokenizer.chat_template:
        return []
    from tokenizers import AddedToken

    vocabulary = tokenizer.get_vocab()
    missing = [token for token in CHATML_TOKENS if token not in vocabulary]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    return missing


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the end-of-text token and, under ChatML, the end-of-turn marker."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if tokenizer.chat_template == CHATML_TEMPLATE:
        ids.append(tokenizer.convert_tokens_to_ids(CHATML_TOKENS[1]))
    return ids


def _render(tokenizer, conversation: Conversation, turns: int, generation_prompt: bool) -> str:
    """The first ``turns`` messages through the chat template; a template's own refusal (roles out of order, a
    role it does not know) is one line naming the record."""
    try:
        return tokenizer.apply_chat_template(list(conversation.messages[:turns]), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # Jinja's errors, and the template's raise_exception(...)
        raise HftoolError(f"{conversation.where}: the chat template refused this conversation "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def assistant_spans(tokenizer, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (answer + end-of-turn)."""
    messages = conversation.messages
    text = _render(tokenizer, conversation, len(messages), False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, conversation, i, True)) if i else 0
        through = _render(tokenizer, conversation, i + 1, False)
        if not text.startswith(through) or start > len(through):
            raise HftoolError(f"{conversation.where}: the chat template does not render this conversation turn "
                              "by turn, so its assistant tokens cannot be found; use data.chat_template=chatml")
        spans.append((start, len(through)))
    return text, spans


@dataclass
class EncodeStats:
    """What encoding did to a split: conversations kept, cut to ``max_length``, or dropped (nothing to learn)."""

    conversations: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    target_tokens: int = 0

    def report(self, split: str, max_length: int) -> str:
        return (f"{split}: {self.conversations:,} conversations, {self.tokens:,} tokens "
                f"({self.target_tokens:,} trained on); {self.truncated:,} cut to data.max_length={max_length}, "
                f"{self.dropped:,} dropped (no answer token left after the cut)")


def encode(tokenizer, conversations: Sequence[Conversation], max_length: int, train_on_prompt: bool,
           truncation: str = "keep_start") -> tuple[list[dict], EncodeStats]:
    """Token ids and target masks of each conversation (end-of-text appended), cut to ``max_length``: its
    first tokens kept (``keep_start``), or its last ones, the answer and end-of-text (``keep_end``)."""
    stats = EncodeStats()
    items = []
    eos = tokenizer.eos_token_id
    rendered = [assistant_spans(tokenizer, conversation) for conversation in conversations]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False,
                        return_offsets_mapping=True) if rendered else {"input_ids": [], "offset_mapping": []}
    for conversation, (_, spans), ids, offsets in zip(conversations, rendered, encoded["input_ids"],
                                                      encoded["offset_mapping"], strict=True):
        starts = np.array([start for start, _ in offsets], dtype=np.int64)
        targets = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            targets |= (starts >= start) & (starts < end)
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
            targets = np.append(targets, conversation.messages[-1]["role"] == "assistant")
        if train_on_prompt:
            targets[:] = True
        if len(ids) > max_length:
            stats.truncated += 1
            kept = slice(None, max_length) if truncation == "keep_start" else slice(len(ids) - max_length, None)
            ids, targets = ids[kept], targets[kept]
        targets[0] = False  # nothing predicts a conversation's first token (nor, packed, across conversations)
        if not targets.any():
            stats.dropped += 1
            continue
        stats.conversations += 1
        stats.tokens += len(ids)
        stats.target_tokens += int(targets.sum())
        items.append({"input_ids": np.asarray(ids, dtype=np.int64), "targets": targets})
    return items, stats


def pack(items: Sequence[dict], max_length: int) -> list[dict]:
    """Conversations laid end to end in rows of at most ``max_length`` tokens (in order; one that does not fit
    the rest of a row starts the next), each with positions from 0."""
    rows: list[dict] = []
    current: list[dict] = []
    for item in items:
        if current and sum(len(i["input_ids"]) for i in current) + len(item["input_ids"]) > max_length:
            rows.append(_join(current))
            current = []
        current.append(item)
    if current:
        rows.append(_join(current))
    return rows


def _join(items: list[dict]) -> dict:
    return {"input_ids": np.concatenate([i["input_ids"] for i in items]),
            "targets": np.concatenate([i["targets"] for i in items]),
            "position_ids": np.concatenate([np.arange(len(i["input_ids"])) for i in items])}


def collate(items: Sequence[dict], pad_token_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Rows padded on the right; labels hold the token where it is a target, -100 elsewhere. Packed rows carry
    position_ids (padding gets positions of its own, a block of its own) instead of an attention mask."""
    longest = max(len(item["input_ids"]) for item in items)
    length = max(longest, min(-(-longest // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF, max_length))
    input_ids = np.full((len(items), length), pad_token_id, dtype=np.int64)
    labels = np.full((len(items), length), IGNORE_INDEX, dtype=np.int64)
    packed = "position_ids" in items[0]
    extra = np.zeros((len(items), length), dtype=np.int64)
    for row, item in enumerate(items):
        size = len(item["input_ids"])
        input_ids[row, :size] = item["input_ids"]
        labels[row, :size] = np.where(item["targets"], item["input_ids"], IGNORE_INDEX)
        if packed:
            extra[row, :size] = item["position_ids"]
            extra[row, size:] = np.arange(length - size)
        else:
            extra[row, :size] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
    batch["position_ids" if packed else "attention_mask"] = torch.from_numpy(extra)
    return batch


@dataclass
class GenerationCheck:
    """Held-out conversations with references: their prompts (ids up to the last answer) and references."""

    prompts: list[list[int]] = field(default_factory=list)
    references: list[tuple[str, ...]] = field(default_factory=list)
    max_new_tokens: int = 32
    cut: int = 0  # prompts shortened from the left to leave room for the answer


def generation_check(tokenizer, conversations: Sequence[Conversation], limit: int, max_new_tokens: int,
                     positions: int) -> GenerationCheck:
    """The first ``limit`` conversations with references, as prompts that end where the last answer starts."""
    check = GenerationCheck(max_new_tokens=max_new_tokens)
    budget = max(positions - max_new_tokens, 1)
    for conversation in conversations:
        if len(check.prompts) >= limit:
            break
        if not conversation.references:
            continue
        last = max(i for i, m in enumerate(conversation.messages) if m["role"] == "assistant")
        text = _render(tokenizer, conversation, last, True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > budget:
            check.cut += 1
            ids = ids[-budget:]
        check.prompts.append(ids)
        check.references.append(conversation.references)
    return check


class SftTask:
    """Loss summed over target tokens; evaluation: held-out loss / perplexity on the targets, and exact match / F1
    of generated answers against references (``check``), as the official SQuAD v1.1 script scores them."""

    def __init__(self, tokenizer, max_length: int, eval_items: Sequence[dict] = (), fused_head: bool = False,
                 check: GenerationCheck | None = None, generate_batch_size: int = 16):
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_length = max_length
        self.eval_items = eval_items
        self.fused_head = fused_head
        self.check = check or GenerationCheck()
        self.generate_batch_size = generate_batch_size
        self.last_answers: list[str] = []
        self.eval_seconds: list[float] = []

    def collate(self, examples: list[dict], epoch: int) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_token_id, self.max_length)

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX).flatten()
        if not self.fused_head:
            logits = model(**inputs, use_cache=False).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        from accelerate.utils import extract_model_from_parallel

        output = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=NO_LOGITS)
        head = extract_model_from_parallel(model).get_output_embeddings()
        return linear_cross_entropy_sum(output.hidden_states[-1].flatten(0, 1), head_weight(head), targets)

    def evaluate(self, model: torch.nn.Module, engine) -> dict[str, float]:
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        if len(self.eval_items):
            total = torch.zeros(2, dtype=torch.float64, device=engine.device)
            for batch in engine.eval_batches(self.eval_items, self):
                total[0] += self.loss_sum(model, batch).double()
                total[1] += self.count_targets(batch)
            loss_sum, count = engine.reduce_sum(total).tolist()
            loss = loss_sum / max(count, 1)
            metrics.update(loss=loss, perplexity=math.exp(min(loss, 50.0)))
        if self.check.prompts:
            metrics.update(self.score_answers(engine.unwrap(model), engine))
        self.eval_seconds.append(time.perf_counter() - started)
        return metrics

    def score_answers(self, model, engine) -> dict[str, float]:
        """Greedy answers to this process's share of the check prompts, gathered, scored with SQuAD EM / F1."""
        indices = list(engine.shard(range(len(self.check.prompts))))
        answers = {i: a for i, a in zip(indices, self.generate([self.check.prompts[i] for i in indices], model),
                                        strict=True)}
        if engine.num_processes > 1:
            from accelerate.utils import gather_object

            answers = dict(gather_object(list(answers.items())))
        self.last_answers = [answers[i] for i in range(len(self.check.prompts))]
        return answer_scores(self.last_answers, self.check.references)

    def generate(self, prompts: list[list[int]], model) -> list[str]:
        stops = stop_token_ids(self.tokenizer)
        answers = []
        for start in range(0, len(prompts), self.generate_batch_size):
            chunk = prompts[start:start + self.generate_batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.int64)
            mask = torch.zeros((len(chunk), width), dtype=torch.int64)
            for row, prompt in enumerate(chunk):  # left padding: every answer starts at the same column
                ids[row, width - len(prompt):] = torch.tensor(prompt)
                mask[row, width - len(prompt):] = 1
            output = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                    max_new_tokens=self.check.max_new_tokens, do_sample=False,
                                    eos_token_id=stops, pad_token_id=self.pad_token_id)
            answers += [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]
        return answers


def answer_scores(answers: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 (percent) of each answer against its best reference, as SQuAD v1.1 scores them."""
    from hftool.metrics.squad.squad import exact_match_score, f1_score

    pairs = list(zip(answers, references, strict=True))
    exact = sum(max(exact_match_score(a, r) for r in refs) for a, refs in pairs)
    f1 = sum(max(f1_score(a, r) for r in refs) for a, refs in pairs)
    return {"exact_match": 100 * exact / len(pairs), "f1": 100 * f1 / len(pairs)}
