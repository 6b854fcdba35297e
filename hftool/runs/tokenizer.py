"""``hftool tokenizer train``: read the documents, train a fast tokenizer, save it as a transformers folder."""

from __future__ import annotations

from pathlib import Path

from hftool.data.text import DataConfig, SettingNames, load_documents
from hftool.data.tokenizer_training import check_vocab_size, train_tokenizer
from hftool.errors import HftoolError
from hftool.outputs import check_claim, claim_output_dir, entries, releases_claims
from hftool.runs.artifacts import save_tokenizer

# Errors about the text name this command's arguments and flags, not pretraining's recipe keys.
FLAG_NAMES = SettingNames(files="the FILES arguments", text_column="--text-column", hub_dataset="--hub-dataset",
                          encoding_errors=None)
# A folder holding one of these holds a model: a tokenizer saved there would leave it without its own.
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@releases_claims
def run_train_tokenizer(files: list[str], output: str | Path, kind: str, vocab_size: int, lowercase: bool,
                        min_frequency: int, hub_dataset: str | None, hub_config: str | None, text_column: str,
                        overwrite: bool) -> str:
    """Train and save the tokenizer; returns the line that reports what was done."""
    if kind not in ("byte-bpe", "wordpiece"):
        raise HftoolError(f"--kind {kind}: use byte-bpe or wordpiece")
    check_vocab_size(kind, vocab_size, "--vocab-size")
    if files and hub_dataset:
        raise HftoolError(f"--hub-dataset {hub_dataset} and FILES ({files[0]}, ...): give one source, not both")
    inputs = {"files": list(files)}
    model_files = [name for name in entries(Path(output).expanduser()) if name in MODEL_FILES]
    if model_files:
        raise HftoolError(f"--output={output} holds a model ({', '.join(model_files)}); a tokenizer trained there "
                          "would replace the model's own (and --overwrite would remove the model): choose a new "
                          "folder")
    out = check_claim(output, "--output", overwrite, inputs=inputs, what="files of an earlier run")
    data = DataConfig(files=list(files), hub_dataset=hub_dataset, hub_config=hub_config,
                      text_column=text_column, validation_fraction=0.0)
    docs = load_documents(data, seed=0, names=FLAG_NAMES)
    tokenizer = train_tokenizer(docs.train, kind, vocab_size, lowercase, min_frequency)
    claim_output_dir(out, "--output", overwrite, inputs=inputs, what="files of an earlier run")
    save_tokenizer(tokenizer, out)
    return f"trained a {kind} tokenizer with {len(tokenizer):,} tokens on {docs.source}; saved to {out}"
