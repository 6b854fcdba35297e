"""Which examples each optimizer step trains on: a pure function of ``(seed, epoch, step)``.

Each epoch is a seeded permutation, and optimizer step ``s`` takes the next ``examples_per_step`` indices of it.
Those are split into micro-batches, and each micro-batch is split across processes. Resuming at step ``k``
therefore needs no sampler state, and 2 processes with batch ``B`` see exactly the examples that 1 process with
batch ``2B`` sees.

With per-example ``lengths``, each epoch's permutation is cut into mega-batches of up to
``LENGTH_GROUP_STEPS`` optimizer steps and sorted by length inside each. A batch then holds similar lengths,
so a task that pads to the longest item wastes little compute on padding. The order is still a pure function
of seed, epoch and step.

Nothing here needs Accelerate: the engine passes its layout (batch size, accumulation, processes, rank).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hftool.errors import HftoolError

LENGTH_GROUP_STEPS = 50


@dataclass(frozen=True)
class Layout:
    """How one optimizer step's examples are split: micro-batches of ``batch_size`` per process."""

    batch_size: int
    grad_accum: int = 1
    num_processes: int = 1
    process_index: int = 0

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.num_processes

    def micro_starts(self, step_start: int) -> list[int]:
        """Where this process's share of each micro-batch begins, for a step whose examples begin at
        ``step_start``."""
        per_micro = self.batch_size * self.num_processes
        rank_offset = self.process_index * self.batch_size
        return [step_start + micro * per_micro + rank_offset for micro in range(self.grad_accum)]


def epoch_order(num_examples: int, seed: int, epoch: int, examples_per_step: int,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The seeded permutation of one epoch, length-grouped when ``lengths`` (one per example) are given."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator)
    if lengths is None:
        return order
    mega = examples_per_step * max(1, min(LENGTH_GROUP_STEPS, num_examples // (4 * examples_per_step)))
    groups = []
    for chunk in order.split(mega):
        by_length = torch.sort(lengths[chunk], descending=True, stable=True).indices
        groups.append(chunk[by_length])
    return torch.cat(groups)


def step_indices(order: torch.Tensor, step_in_epoch: int, layout: Layout) -> list[list[int]]:
    """This process's example indices for each micro-batch of one optimizer step of the epoch ``order``."""
    start = step_in_epoch * layout.examples_per_step
    return [order[begin:begin + layout.batch_size].tolist() for begin in layout.micro_starts(start)]


def step_examples(train_data: Sequence[Any], start_step: int, seed: int, layout: Layout,
                  lengths: torch.Tensor | None = None) -> Iterator[tuple[int, list[list[Any]]]]:
    """(epoch, this process's examples for each micro-batch) for every step from ``start_step`` on.

    A sized ``train_data`` is read in the seeded order; anything else is read as a stream.
    """
    if not hasattr(train_data, "__len__"):
        yield from stream_step_examples(train_data, start_step, layout)
        return
    steps_per_epoch = len(train_data) // layout.examples_per_step
    cached: tuple[int, torch.Tensor] | None = None
    step = start_step
    while True:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_order(len(train_data), seed, epoch, layout.examples_per_step, lengths))
        yield epoch, [[train_data[i] for i in micro] for micro in step_indices(cached[1], step_in_epoch, layout)]
        step += 1


def stream_step_examples(stream, start_step: int, layout: Layout) -> Iterator[tuple[int, list[list[Any]]]]:
    """Consecutive groups of a stream, one per step; every process reads it and keeps its slices.

    The stream is read again from its start for each epoch; a stream that holds fewer examples than one step
    is refused.
    """
    to_skip, epoch = start_step, 0
    while True:
        iterator, produced = iter(stream), 0
        while True:
            group = list(itertools.islice(iterator, layout.examples_per_step))
            if len(group) < layout.examples_per_step:
                break
            produced += 1
            if to_skip:
                to_skip -= 1
                continue
            yield epoch, [group[begin:begin + layout.batch_size] for begin in layout.micro_starts(0)]
        if produced == 0:
            raise HftoolError("the training stream holds fewer examples than one optimizer step; "
                              "add data or lower train.batch_size")
        epoch += 1
