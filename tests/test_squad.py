"""SQuAD data, windows, labels, batching, post-processing and length-grouped batches, in process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import REPO
from squad_fixtures import hand_examples, write_jsonl, write_official
from transformers import AutoTokenizer, BertForQuestionAnswering

from hftool.data import squad as squad_data
from hftool.data.squad import (
    WindowSettings,
    cached_windows,
    encode_windows,
    read_questions_file,
    read_squad_file,
)
from hftool.engine.config import TrainConfig
from hftool.engine.eval_sharding import balanced_length_order
from hftool.engine.trainer import Engine
from hftool.errors import HftoolError
from hftool.tasks.squad import SquadTask
from hftool.tasks.squad_postprocess import Candidate, rank_answers, span_candidates


@pytest.fixture(scope="module")
def wordpiece(minilm):
    """A real uncased WordPiece fast tokenizer (MiniLM's)."""
    return AutoTokenizer.from_pretrained(minilm)


def check_window_labels(examples, windows, cls_index: int = 0) -> tuple[int, int]:
    """Every labelled window decodes to the answer; every [CLS]-labelled one does not hold it whole.

    Returns (windows whose span is exactly the answer text, labelled windows)."""
    exact = labelled = 0
    for w in range(len(windows)):
        example = examples[windows.example_index[w]]
        start_char = example.answer_starts[0]
        end_char = start_char + len(example.answer_texts[0])
        offsets = windows.window_offsets(w)
        start, end = windows.start_positions[w], windows.end_positions[w]
        context = offsets[offsets[:, 0] >= 0]
        holds_answer = context[0, 0] <= start_char and context[-1, 1] >= end_char
        if start == cls_index:
            assert end == cls_index and not holds_answer, example.id
            continue
        labelled += 1
        assert holds_answer and 0 < start <= end < len(offsets), example.id
        assert offsets[start, 0] <= start_char < offsets[start, 1], example.id  # first token holds the start
        assert offsets[end, 0] < end_char <= offsets[end, 1], example.id  # last token holds the end
        exact += example.context[offsets[start, 0]:offsets[end, 1]] == example.answer_texts[0]
    return exact, labelled


@pytest.mark.parametrize("max_length, stride", [(384, 128), (40, 12), (32, 8)])
def test_every_window_label_decodes_to_the_fixture_answer(wordpiece, max_length, stride):
    examples = hand_examples()
    windows = encode_windows(examples, wordpiece, WindowSettings(max_length, stride))
    exact, labelled = check_window_labels(examples, windows)
    assert exact == labelled  # the hand-written answers all start and end on token boundaries
    labelled_examples = {windows.example_index[w] for w in range(len(windows)) if windows.start_positions[w]}
    assert labelled_examples == set(range(len(examples)))  # every answer is whole in some window
    if max_length < 384:
        assert len(windows) > 2 * len(examples)  # long contexts really were cut into overlapping windows
        assert (windows.lengths <= max_length).all()


def test_window_labels_on_real_training_questions(wordpiece, shared_data):
    examples = read_squad_file(shared_data / "squad" / "train-v1.1-subset-44-articles.json")[:400]
    windows = encode_windows(examples, wordpiece, WindowSettings(128, 48))
    exact, labelled = check_window_labels(examples, windows)
    assert len(windows) > len(examples) and labelled > 0.5 * len(examples)
    assert exact / labelled > 0.98  # the rest start or end inside a word piece (e.g. "1880" of "1880s")


def test_fixed_dynamic_and_rounded_padding_give_the_same_loss_and_answers(tiny_bert, wordpiece):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(tiny_bert).eval()
    examples = hand_examples()[:6]
    settings = WindowSettings(64, 16)
    windows = encode_windows(examples, tokenizer, settings)
    dynamic = SquadTask(settings, windows.pad_token_id, pad_to_multiple_of=1)
    rounded = SquadTask(settings, windows.pad_token_id, pad_to_multiple_of=24)
    fixed = SquadTask(settings, windows.pad_token_id, pad_to_max_length=True)
    short = [i for i in range(len(windows)) if windows.lengths[i] < 64]  # the last window of each context
    assert len({windows.lengths[i] for i in short}) > 2
    items = [windows[i] for i in short]
    tasks = (dynamic, rounded, fixed)
    batches = [task.collate(items, 0) for task in tasks]
    longest = windows.lengths[short].max()
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert widths == [longest, min(-(-longest // 24) * 24, 64), 64] and longest < 64
    with torch.no_grad():
        losses = [task.loss_sum(model, batch).item() for task, batch in zip(tasks, batches, strict=True)]
        found = [task.window_candidates(model, [batch], windows) for task, batch in zip(tasks, batches, strict=True)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert found[0].keys() == found[1].keys() == found[2].keys() == {windows.example_index[i] for i in short}
    for index in found[0]:
        context = examples[index].context
        best = [rank_answers(candidates[index], context, 5) for candidates in found]
        assert [a.text for a in best[0]] == [a.text for a in best[1]] == [a.text for a in best[2]] and best[0]


def test_windows_split_over_two_processes_merge_to_the_one_process_answers(tiny_bert):
    """What 2-process evaluation adds to gathering (tested for classify in test_labelling_cli): an example's windows
    scored on different ranks, merged in either rank order, give the answer one process gives."""
    from hftool.tasks.squad import best_text, merge_candidates

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(tiny_bert).eval()
    examples = hand_examples()[:6]
    settings = WindowSettings(64, 16)
    windows = encode_windows(examples, tokenizer, settings)
    task = SquadTask(settings, windows.pad_token_id, pad_to_multiple_of=1)
    order = balanced_length_order(windows.lengths, 2)
    ranks = [order[:len(order) // 2], order[len(order) // 2:]]

    def candidates(indices):
        with torch.no_grad():
            return task.window_candidates(model, [task.collate([windows[int(i)] for i in indices], 0)], windows)

    alone = candidates(order)
    per_rank = [candidates(indices) for indices in ranks]
    assert set(per_rank[0]) & set(per_rank[1])  # some example has windows on both ranks
    for gathered in ([*per_rank[0].items(), *per_rank[1].items()], [*per_rank[1].items(), *per_rank[0].items()]):
        merged = merge_candidates(gathered)
        assert merged.keys() == alone.keys()
        assert {i: best_text(examples[i], found, 20) for i, found in merged.items()} == \
            {i: best_text(examples[i], found, 20) for i, found in alone.items()}


def test_span_search_follows_the_reference_rules():
    # tokens: [CLS] q q [SEP] c0..c5 [SEP]; context token c_i covers characters [10 i, 10 i + 5)
    offsets = np.array([[-1, -1]] * 4 + [[10 * i, 10 * i + 5] for i in range(6)] + [[-1, -1]])
    start_logits = np.array([9.0, 8.0, 0, 0, 1.0, 0, 5.0, 0, 0, 0, 0])
    end_logits = np.array([9.0, 0, 7.0, 0, 0, 0, 2.0, 0, 6.0, 0, 0])
    order_s, order_e = np.argsort(-start_logits, kind="stable"), np.argsort(-end_logits, kind="stable")
    found = span_candidates(start_logits[order_s], order_s, end_logits[order_e], order_e, offsets,
                            max_answer_length=30, n_best=20)
    best = found[0]
    assert (best.start_char, best.end_char, best.score) == (20, 45, 11.0)  # c2..c4: 5 + 6; CLS/question lose
    assert all(c.end_char > c.start_char for c in found)
    short = span_candidates(start_logits[order_s], order_s, end_logits[order_e], order_e, offsets,
                            max_answer_length=1, n_best=20)
    assert {(c.start_char, c.end_char) for c in short} <= {(10 * i, 10 * i + 5) for i in range(6)}
    assert short[0].score == 7.0  # c2 alone: 5 + 2
    padded = span_candidates(np.array([9.0, 5.0]), np.array([30, 6]), np.array([9.0, 6.0]), np.array([31, 8]),
                             offsets, max_answer_length=30, n_best=20)
    assert [(c.start_char, c.end_char) for c in padded] == [(20, 45)]  # indices past the window are padding


def test_answers_merge_over_windows_best_first_with_probabilities():
    context = "abcdefghij"
    window_a = [Candidate(3.0, 0, 2), Candidate(1.0, 4, 6)]
    window_b = [Candidate(5.0, 4, 6), Candidate(2.0, 0, 2)]  # same spans seen again, scored higher here
    ranked = rank_answers(window_a + window_b, context, n_best=20)
    assert [(a.text, a.score) for a in ranked] == [("ef", 5.0), ("ab", 3.0)]
    assert sum(a.probability for a in ranked) == pytest.approx(1.0)
    assert ranked[0].probability == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert rank_answers([], context, 20) == []


def test_all_file_layouts_read_the_same(tmp_path):
    examples = hand_examples()
    nested = read_squad_file(write_official(tmp_path / "train.json", examples))
    flat = read_squad_file(write_jsonl(tmp_path / "train.jsonl", examples))
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"id": e.id, "question": e.question, "context": e.context, "answers": [
        {"text": t, "answer_start": s} for t, s in zip(e.answer_texts, e.answer_starts, strict=True)]}
        for e in examples]), encoding="utf-8")
    listed = read_squad_file(as_list)
    key = [(e.id, e.question, e.context, e.answer_texts, e.answer_starts) for e in examples]
    for loaded in (nested, flat, listed):
        assert [(e.id, e.question, e.context, e.answer_texts, e.answer_starts) for e in loaded] == key
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "Who?", "context": "Me."}) + "\n", encoding="utf-8")
    assert [(q.id, q.question, q.answer_texts) for q in read_questions_file(questions)] == [("1", "Who?", ())]


def test_misaligned_answers_are_skipped_with_a_warning_or_refused(tmp_path):
    examples = hand_examples()
    data = json.loads(write_official(tmp_path / "x.json", examples).read_text())
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    warnings: list[str] = []
    kept = read_squad_file(bad, warn=warnings.append)
    assert len(kept) == len(examples) - 1 and "sb-winner" not in {e.id for e in kept}
    assert len(warnings) == 1 and "1 answer(s) do not match" in warnings[0] and "sb-winner" in warnings[0]
    with pytest.raises(HftoolError, match="1 answer.*sb-winner.*--strict"):
        read_squad_file(bad, strict=True)


def test_windows_are_cached_by_text_tokenizer_and_settings(wordpiece, tmp_path, monkeypatch):
    examples = hand_examples()
    settings = WindowSettings(48, 16)
    first = cached_windows(examples, wordpiece, settings, tmp_path)
    assert len(list(tmp_path.glob("squad-windows-*.npz"))) == 1

    def must_not_tokenize(*args):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(squad_data, "encode_windows", must_not_tokenize)
    again = cached_windows(examples, wordpiece, settings, tmp_path)
    for name in squad_data.WINDOW_ARRAYS:
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    monkeypatch.undo()
    cached_windows(examples, wordpiece, WindowSettings(48, 8), tmp_path)
    cached_windows(examples[:-1], wordpiece, settings, tmp_path)
    assert len(list(tmp_path.glob("squad-windows-*.npz"))) == 3


class RecordingTask:
    """A stand-in task that records which examples each optimizer step trained on."""

    def __init__(self):
        self.steps: list[list[int]] = []

    def collate(self, examples, epoch):
        self.steps.append(list(examples))
        return {"input_ids": torch.tensor(examples)[:, None]}

    def count_targets(self, batch):
        return int(batch["input_ids"].shape[0])

    def loss_sum(self, model, batch):
        return (model(batch["input_ids"].float()) ** 2).sum()

    def evaluate(self, model, engine):
        return {}


@pytest.fixture
def fresh_accelerator():
    """Engines in this process start from a clean Accelerate state (it is a per-process singleton that
    refuses a second mixed-precision setting), as Accelerate's own test cases do."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def grouped_run(tmp_path, lengths, name: str, batch_size: int = 4) -> list[list[int]]:
    config = TrainConfig(output_dir=str(tmp_path / name), batch_size=batch_size, epochs=2, lr=1e-3,
                         mixed_precision="no", report_to="none", log_every=1000)
    task = RecordingTask()
    Engine(config, tmp_path / name).fit(torch.nn.Linear(1, 1), list(range(len(lengths))), task,
                                        lengths=lengths)
    return task.steps


def test_length_grouped_batches_hold_similar_lengths_and_every_example(tmp_path, fresh_accelerator):
    lengths = np.random.default_rng(0).integers(20, 384, size=400)
    steps = grouped_run(tmp_path, lengths, "a")
    assert len(steps) == 2 * 100
    for epoch in (steps[:100], steps[100:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(400))  # each example once per epoch
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in steps])
    shuffled = np.random.default_rng(1).permutation(400).reshape(100, 4)
    assert spread < 0.2 * np.mean([lengths[b].max() - lengths[b].min() for b in shuffled])
    assert steps[:100] != steps[100:]  # epochs are shuffled differently
    assert grouped_run(tmp_path, lengths, "b") == steps  # and the order is a pure function of the seed


def test_evaluation_order_is_sorted_and_balanced_per_process():
    lengths = np.array([5, 9, 1, 7, 3, 8, 2])
    order = balanced_length_order(lengths, 2)
    assert sorted(order.tolist()) == list(range(7))
    first, second = lengths[order[:4]], lengths[order[4:]]
    assert list(first) == sorted(first, reverse=True) and list(second) == sorted(second, reverse=True)
    assert abs(int(first.sum()) - int(second.sum())) <= lengths.max()


def test_squad_recipes_validate():
    from hftool.recipes import validate_recipe

    for name in ("squad-bert-base", "squad-minilm"):
        resolved = validate_recipe(REPO / "recipes" / "finetune" / f"{name}.yaml", [])
        assert resolved.startswith("command: finetune squad")
