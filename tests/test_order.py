"""The step order is a pure function of (seed, epoch, step) and of the layout: no Accelerator needed."""

import dataclasses
import itertools

import pytest
import torch

from hftool.engine.config import TrainConfig
from hftool.engine.order import Layout, epoch_order, step_examples, step_indices, stream_step_examples
from hftool.errors import HftoolError


def _steps(data, layout, start=0, n=6, seed=7, lengths=None):
    return list(itertools.islice(step_examples(data, start, seed, layout, lengths), n))


def test_each_epoch_is_a_seeded_permutation_that_steps_cover_once():
    data = list(range(40))
    layout = Layout(batch_size=2, grad_accum=2, num_processes=2, process_index=0)
    assert torch.equal(epoch_order(40, 7, 0, 8), epoch_order(40, 7, 0, 8))
    assert not torch.equal(epoch_order(40, 7, 0, 8), epoch_order(40, 7, 1, 8))
    assert not torch.equal(epoch_order(40, 8, 0, 8), epoch_order(40, 7, 0, 8))
    seen = []
    for rank in (0, 1):  # 40 // 8 = 5 steps per epoch, every example at most once across steps and processes
        steps = _steps(data, dataclasses.replace(layout, process_index=rank), n=5)
        assert {epoch for epoch, _ in steps} == {0}
        seen += [x for _, micro in steps for batch in micro for x in batch]
    assert sorted(seen) == data
    assert _steps(data, layout, n=6)[5][0] == 1  # step 5 starts the next epoch


def test_two_processes_see_what_one_process_with_twice_the_batch_sees():
    data = list(range(50))
    one = _steps(data, Layout(batch_size=4, grad_accum=3))
    rank0 = _steps(data, Layout(batch_size=2, grad_accum=3, num_processes=2, process_index=0))
    rank1 = _steps(data, Layout(batch_size=2, grad_accum=3, num_processes=2, process_index=1))
    for (e, micros), (e0, m0), (e1, m1) in zip(one, rank0, rank1, strict=True):
        assert e == e0 == e1
        assert micros == [a + b for a, b in zip(m0, m1, strict=True)]


def test_resuming_at_a_step_gives_the_same_examples_as_running_through():
    data = [f"ex{i}" for i in range(30)]
    layout = Layout(batch_size=3, grad_accum=2)
    assert _steps(data, layout, n=12)[7:] == _steps(data, layout, start=7, n=5)
    order = epoch_order(30, 7, 1, layout.examples_per_step)
    assert step_indices(order, 2, layout) == [order[12:15].tolist(), order[15:18].tolist()]


def test_lengths_group_similar_lengths_within_each_mega_batch():
    lengths = torch.arange(400) % 37
    grouped = epoch_order(400, 3, 0, 4, lengths)
    assert sorted(grouped.tolist()) == list(range(400))  # still a permutation
    mega = 4 * 25  # min(50, 400 // (4 * 4)) steps of 4 examples
    for chunk in grouped.split(mega):
        assert torch.equal(lengths[chunk], torch.sort(lengths[chunk], descending=True).values)
    plain = epoch_order(400, 3, 0, 4)
    for a, b in zip(grouped.split(mega), plain.split(mega), strict=True):  # same examples in each mega-batch
        assert sorted(a.tolist()) == sorted(b.tolist())


def test_a_stream_is_read_in_consecutive_groups_and_refused_when_too_short():
    layout = Layout(batch_size=2, grad_accum=2, num_processes=2, process_index=1)
    steps = list(itertools.islice(stream_step_examples(range(17), 0, layout), 3))
    assert steps == [(0, [[2, 3], [6, 7]]), (0, [[10, 11], [14, 15]]), (1, [[2, 3], [6, 7]])]
    assert list(itertools.islice(stream_step_examples(range(17), 1, layout), 2)) == steps[1:]
    assert _steps(iter(range(17)), layout, n=1) == steps[:1]  # no length: read as a stream
    with pytest.raises(HftoolError, match="fewer examples than one optimizer step"):
        next(stream_step_examples(range(7), 0, layout))


def test_train_config_is_read_only():
    config = TrainConfig(batch_size=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 8
    assert dataclasses.replace(config, batch_size=8).batch_size == 8 and config.batch_size == 4
    assert "num_workers" not in {f.name for f in dataclasses.fields(TrainConfig)}
