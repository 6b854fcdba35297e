"""What the two labelling tasks (classify, ner) share: how their batches are padded. Not a task itself."""

from __future__ import annotations

import numpy as np

PAD_TO_MULTIPLE_OF = 8


def pad_batch(items: list[dict], pad_token_id: int, pad_to: int | None, max_length: int) -> dict:
    """Input ids, attention mask (and token types) padded on the right as tensors."""
    import torch

    longest = max(len(item["input_ids"]) for item in items)
    rounded = -(-longest // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    length = pad_to or max(longest, min(rounded, max_length))
    input_ids = np.full((len(items), length), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(items), length), dtype=np.int64)
    with_types = "token_type_ids" in items[0]
    token_type_ids = np.zeros((len(items), length), dtype=np.int64)
    for row, item in enumerate(items):
        size = len(item["input_ids"])
        input_ids[row, :size] = item["input_ids"]
        attention_mask[row, :size] = 1
        if with_types:
            token_type_ids[row, :size] = item["token_type_ids"]
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
             "index": torch.tensor([item["index"] for item in items])}
    if with_types:
        batch["token_type_ids"] = torch.from_numpy(token_type_ids)
    return batch
