"""BERT pretraining: masked language modelling (``mlm``) and MLM + next-sentence prediction (``mlm-nsp``).

Loss weighting. The engine divides the summed loss by the number of loss items of the *whole* optimizer step,
so that gradient accumulation and data parallelism equal one big batch. Here a loss item is one example
(one sentence pair): ``loss_sum`` returns, summed over the examples, each example's mean MLM loss over its
masked tokens plus its NSP loss. The per-step loss is then ``mean MLM + mean NSP`` over the examples, the
same quantity ``BertForPreTraining`` reports, and it stays exact under any split of the batch because every
example's term is self-contained. (It weighs examples, not tokens, equally; the two agree when examples
hold the same number of masked tokens, as nearly all full-length ones do.)

Speed. The vocabulary projection dominates a small BERT's step, so the model runs its MLM head only on the
masked positions (:class:`MaskedOnlyBertForPreTraining`); the folder written at the end holds a standard
``BertForPreTraining`` / ``BertForMaskedLM`` checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM, BertForPreTraining
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.bert.modeling_bert import BertForPreTrainingOutput

from hftool.data.bert_examples import BertExamples, ExampleRef, collate_examples
from hftool.errors import HftoolError

PRETRAINING_HEADS = ("cls.predictions", "cls.seq_relationship", "bert.pooler")


def _at_positions(hidden: torch.Tensor, masked_positions: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``(batch * length, hidden)`` at flattened ``masked_positions`` (all rows when None)."""
    return hidden if masked_positions is None else hidden.flatten(0, 1).index_select(0, masked_positions)


class MaskedOnlyBertForPreTraining(BertForPreTraining):
    """``BertForPreTraining`` whose forward projects onto the vocabulary only at ``masked_positions``.

    Same parameters and state-dict keys as its parent; it only adds a faster forward for training.
    """

    standard_class = BertForPreTraining

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, masked_positions=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            return_dict=True, **kwargs)
        hidden = _at_positions(outputs.last_hidden_state, masked_positions)
        return BertForPreTrainingOutput(prediction_logits=self.cls.predictions(hidden),
                                        seq_relationship_logits=self.cls.seq_relationship(outputs.pooler_output))


class MaskedOnlyBertForMaskedLM(BertForMaskedLM):
    """``BertForMaskedLM`` whose forward projects onto the vocabulary only at ``masked_positions``."""

    standard_class = BertForMaskedLM

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, masked_positions=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            return_dict=True, **kwargs)
        return MaskedLMOutput(logits=self.cls(_at_positions(outputs.last_hidden_state, masked_positions)))


def mlm_logits_of(outputs) -> torch.Tensor:
    """The MLM scores of a BertForPreTraining (``prediction_logits``) or BertForMaskedLM (``logits``) output."""
    logits = getattr(outputs, "prediction_logits", None)
    return outputs.logits if logits is None else logits


def as_standard_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in the plain transformers class, so that the saved config names a standard class."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        standard = model.standard_class(model.config)
    standard.load_state_dict(model.state_dict())
    return standard.to(model.device).eval()


class BertPretrainingTask:
    """Collates BERT examples, sums the MLM (+ NSP) loss per example, and evaluates on held-out pairs."""

    def __init__(self, pad_id: int, eval_examples: BertExamples | None = None):
        self.pad_id = pad_id
        self.eval_examples = eval_examples

    def collate(self, examples: list[ExampleRef], epoch: int) -> dict[str, torch.Tensor]:
        made = [ref.source.example(ref.index, epoch) for ref in examples]
        return {k: torch.from_numpy(v) for k, v in collate_examples(made, self.pad_id).items()}

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0]

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.losses(model, batch, metrics=False)["objective"]

    def losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
               metrics: bool = True) -> dict[str, torch.Tensor]:
        """The summed objective of one batch and, with ``metrics``, its summed MLM/NSP losses and hits.

        It calls the top-level forward (the one DDP wraps), with the masked positions.
        """
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"], masked_positions=batch["masked_positions"])
        mlm_logits = mlm_logits_of(outputs).float()
        labels = batch["masked_labels"]
        token_losses = F.cross_entropy(mlm_logits, labels, reduction="none")
        result = {"objective": (token_losses * batch["masked_weights"]).sum()}
        if metrics:
            result.update(mlm_loss=token_losses.sum().detach(), mlm_correct=(mlm_logits.argmax(-1) == labels).sum(),
                          masked=torch.tensor(labels.numel(), device=labels.device))
        if "next_sentence_label" in batch:
            nsp_logits = outputs.seq_relationship_logits.float()
            nsp_labels = batch["next_sentence_label"]
            nsp_loss = F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")
            result["objective"] = result["objective"] + nsp_loss
            if metrics:
                result.update(nsp_loss=nsp_loss.detach(), nsp_correct=(nsp_logits.argmax(-1) == nsp_labels).sum())
        return result

    def evaluate(self, model: torch.nn.Module, engine) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        names = ("objective", "mlm_loss", "mlm_correct", "masked", "nsp_loss", "nsp_correct")
        total = torch.zeros(len(names) + 1, dtype=torch.float64, device=engine.device)
        for batch in engine.eval_batches(self.eval_examples, self):
            found = self.losses(model, batch)
            for i, name in enumerate(names):
                if name in found:
                    total[i] += found[name].double()
            total[-1] += self.count_targets(batch)
        sums = dict(zip((*names, "examples"), engine.reduce_sum(total).tolist(), strict=True))
        masked, examples = max(sums["masked"], 1.0), max(sums["examples"], 1.0)
        metrics = {"loss": sums["objective"] / examples, "mlm_loss": sums["mlm_loss"] / masked,
                   "mlm_accuracy": sums["mlm_correct"] / masked}
        if self.eval_examples.next_sentence:
            metrics.update(nsp_loss=sums["nsp_loss"] / examples, nsp_accuracy=sums["nsp_correct"] / examples)
        return metrics


def check_bert_tokenizer(tokenizer, where: str) -> None:
    """BERT examples need [CLS], [SEP], [MASK] and [PAD]; a GPT-style tokenizer has none of them."""
    missing = [name for name in ("cls_token", "sep_token", "mask_token", "pad_token")
               if getattr(tokenizer, f"{name}_id", None) is None]
    if missing:
        raise HftoolError(f"{where}: the tokenizer has no {', '.join(missing)}; BERT pretraining needs "
                          "[CLS], [SEP], [MASK] and [PAD] (use a WordPiece tokenizer, tokenizer.kind=wordpiece)")
