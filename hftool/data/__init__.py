"""Data: text sources, the embedded default corpus, tokenizer training and block packing."""
