"""Data for every command: reading and checking the user's files (text corpora, SQuAD, labelled CSV/TSV/JSONL,
CoNLL) or Hub datasets, the embedded default corpus, BERT's sentence pairs, tokenizer training and packing."""
