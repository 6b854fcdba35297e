"""``hftool pretrain`` with objectives ``mlm`` and ``mlm-nsp`` (BERT): sentence corpora and examples, the model
(fresh, or continued with any missing pretraining heads new), and the fill-mask sample written at the end."""

from __future__ import annotations

import torch
from transformers import set_seed

from hftool.data.bert_examples import TRAIN_SALT, VALIDATION_SALT, BertExamples
from hftool.data.bert_sentences import prepare_corpus, split_sentences, tokenize_corpus
from hftool.data.text import Documents
from hftool.errors import HftoolError
from hftool.loading import cache_dir, load_config, load_model, resolve_model
from hftool.models import build_config, check_vocab_fits, vocab_too_large
from hftool.runs.artifacts import pretrain_card, write_final_artifacts
from hftool.runs.pretrain_recipe import PretrainJob
from hftool.schemas.pretrain import PretrainRecipe
from hftool.tasks.bert_pretraining import (
    PRETRAINING_HEADS,
    BertPretrainingTask,
    MaskedOnlyBertForMaskedLM,
    MaskedOnlyBertForPreTraining,
    as_standard_model,
    check_bert_tokenizer,
    mlm_logits_of,
)


def setup_bert_pretraining(recipe: PretrainRecipe, engine, docs: Documents, tokenizer) -> PretrainJob:
    """Data and model for BERT pretraining (objective ``mlm`` or ``mlm-nsp``), ready for the engine."""
    data, bert, seed = recipe.data, recipe.bert, recipe.train.seed
    next_sentence = recipe.objective == "mlm-nsp"
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
        standard = as_standard_model(trained)
        card = pretrain_card(recipe, summary, "fill-mask", engine.batch_size)
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
    model_class = MaskedOnlyBertForPreTraining if next_sentence else MaskedOnlyBertForMaskedLM
    if recipe.model.init_from:
        name, flag = recipe.model.init_from, "model.init_from"
        ref = resolve_model(name, flag)
        rows = load_config(ref, name, flag).vocab_size
        if len(tokenizer) > rows and not recipe.tokenizer.resize_embeddings:  # refuse before loading weights
            raise vocab_too_large(len(tokenizer), rows)
        engine.print(f"continuing from {ref.name_or_path}")
        model, info = load_model(model_class, ref, name, flag, with_info=True,
                                 trust_remote_code=recipe.model.trust_remote_code)
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
