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


def setup_bert_pretraining(recipe, engine, out, resume: bool):
    """Data, tokenizer and model for BERT pretraining (objective ``mlm`` or ``mlm-nsp``), ready for the engine."""
    from transformers import set_seed

    from hftool.data.bert_examples import TRAIN_SALT, VALIDATION_SALT, prepare_corpus, tokenize_corpus
    from hftool.data.builtin_corpus import cache_dir
    from hftool.data.text import load_documents
    from hftool.tasks.pretrain import PretrainJob, obtain_tokenizer

    data, bert, seed = recipe.data, recipe.bert, recipe.train.seed
    next_sentence = recipe.objective == "mlm-nsp"
    if data.streaming:
        raise HftoolError(f"data.streaming=true cannot be used with objective={recipe.objective}: pairs draw "
                          "their negatives from any document, so the corpus is held in memory; set "
                          "data.streaming=false (and data.max_documents to cap it)")
    docs = load_documents(data, seed)
    tokenizer = obtain_tokenizer(recipe, engine, out, resume, docs.train)
    check_bert_tokenizer(tokenizer, recipe.tokenizer.path or recipe.model.init_from or "tokenizer")

    max_tokens = data.block_size - (3 if next_sentence else 2)
    with engine.accelerator.main_process_first():
        corpora = [prepare_corpus(tokenize_corpus(split, tokenizer, bert.sentence_splitter, cache_dir() / "bert"),
                                  max_tokens, bert.min_document_tokens) if split else None
                   for split in (docs.train, docs.validation)]
    train_corpus, eval_corpus = corpora
    train_data = BertExamples(train_corpus, tokenizer, bert, data.block_size, seed, next_sentence, TRAIN_SALT)
    eval_data = None
    if eval_corpus is not None and (eval_corpus.num_documents >= 2 or not next_sentence):
        eval_data = BertExamples(eval_corpus, tokenizer, bert, data.block_size, seed, next_sentence,
                                 VALIDATION_SALT)
    elif docs.validation:
        engine.print("warning: the validation split holds fewer than 2 documents, too few for held-out NSP "
                     "pairs; evaluation is skipped (raise data.validation_fraction or set data.validation_files)")
    stats = _data_stats(docs.source, train_corpus, train_data, eval_data)
    unit = "pairs" if next_sentence else "examples"
    engine.print(
        f"{stats['train_documents']:,} documents, {train_corpus.num_sentences:,} sentences, "
        f"{stats['train_tokens']:,} tokens -> {len(train_data):,} {unit} per epoch (re-sampled each epoch), "
        f"{stats['eval_examples']:,} held-out {unit}; {stats['documents_without_sentence_boundary']:,} documents "
        f"had no sentence boundary, {stats['long_sentences_split']:,} sentences longer than {max_tokens} tokens "
        f"were split, {stats['short_documents_joined']:,} documents under {bert.min_document_tokens} tokens were "
        "joined to the next")

    set_seed(seed)
    model = _build_model(recipe, tokenizer, engine, next_sentence)
    engine.print(f"model: {type(model).standard_class.__name__}, "
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    sample_text = _sample_sentence(docs.validation, bert.sentence_splitter)

    def save(trained, folder, summary, state_dict):
        from hftool.tasks.causal_lm import model_card
        from hftool.tasks.pretrain import write_final_artifacts

        standard = as_standard_model(trained)
        card = model_card(recipe, summary, "fill-mask", engine.batch_size)
        write_final_artifacts(standard, tokenizer, folder, summary, card, state_dict)
        print_fill_mask_sample(standard, tokenizer, sample_text)

    return PretrainJob(model=model, train_data=train_data, task=BertPretrainingTask(tokenizer.pad_token_id,
                                                                                    eval_data),
                       data_stats=stats, finish=save)


def _data_stats(source: str, corpus, train_data: BertExamples, eval_data: BertExamples | None) -> dict:
    return {"data": source, "train_documents": corpus.num_documents, "train_tokens": len(corpus.tokens),
            "train_examples": len(train_data), "eval_examples": len(eval_data) if eval_data else 0,
            **{k: int(v) for k, v in corpus.stats.items()}}


def _build_model(recipe, tokenizer, engine, next_sentence: bool):
    """A fresh BERT from ``model.config``, or ``model.init_from`` with any missing pretraining heads new."""
    from hftool.models import build_config, check_vocab_fits, vocab_too_large

    model_class = MaskedOnlyBertForPreTraining if next_sentence else MaskedOnlyBertForMaskedLM
    if recipe.model.init_from:
        from transformers import AutoConfig

        from hftool.hub import resolve_model

        ref = resolve_model(recipe.model.init_from, "model.init_from")
        rows = AutoConfig.from_pretrained(ref.name_or_path, **ref.load_kwargs()).vocab_size
        if len(tokenizer) > rows and not recipe.tokenizer.resize_embeddings:  # refuse before loading weights
            raise vocab_too_large(len(tokenizer), rows)
        engine.print(f"continuing from {ref.name_or_path}")
        model, info = model_class.from_pretrained(ref.name_or_path, output_loading_info=True,
                                                  trust_remote_code=recipe.model.trust_remote_code,
                                                  **ref.load_kwargs())
        tied = set(model_class._tied_weights_keys)  # the decoder shares the (loaded) word embeddings
        fresh = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]
                        if key.startswith(PRETRAINING_HEADS) and key not in tied})
        if fresh:
            engine.print(f"note: {recipe.model.init_from} has no pretraining heads for {', '.join(fresh)}; "
                         "they start freshly initialised")
    else:
        model = model_class(build_config("bert", recipe.model.config, tokenizer, recipe.data.block_size))
    check_vocab_fits(model, tokenizer, recipe.tokenizer.resize_embeddings)
    positions = model.config.max_position_embeddings
    if positions < recipe.data.block_size:
        raise HftoolError(f"data.block_size={recipe.data.block_size} is longer than the model's {positions} "
                          "positions; lower data.block_size")
    return model


def _sample_sentence(docs: list[str], splitter: str) -> str:
    """A held-out sentence of ordinary words for the fill-mask sample ('' when there is none)."""
    from hftool.data.bert_examples import split_sentences

    for doc in docs[:200]:
        for sentence in split_sentences(doc, splitter):
            words = sentence.split()
            if 8 <= len(words) <= 40 and sum(word.isalpha() for word in words) >= 0.8 * len(words):
                return sentence
    return ""


def print_fill_mask_sample(model, tokenizer, text: str, top_k: int = 5) -> list[str]:
    """Mask one whole word of a held-out sentence and show what the trained model puts there."""
    ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=64)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = set(tokenizer.all_special_ids)
    whole = [i for i in range(1, len(ids) - 1) if ids[i] not in special and tokens[i].isalpha()
             and not tokens[i].startswith("##") and not tokens[i + 1].startswith("##")]
    if not whole:
        return []
    position = whole[len(whole) // 2]
    answer = tokens[position]
    ids[position] = tokenizer.mask_token_id
    model.eval()
    with torch.inference_mode():
        logits = mlm_logits_of(model(input_ids=torch.tensor([ids], device=model.device)))
    guesses = tokenizer.convert_ids_to_tokens(logits[0, position].float().topk(top_k).indices.tolist())
    print(f"\nfill-mask sample: {tokenizer.decode(ids[1:-1])!r}\n  answer {answer!r}; "
          f"the model's top {top_k}: {', '.join(guesses)}\n")
    return guesses
