"""``hftool adapters merge``: an adapter folder (a LoRA run's output) merged into its base model and written as
an ordinary model folder that plain transformers loads (``AutoModelFor...``), with the adapter folder's tokenizer
and generation settings."""

from __future__ import annotations

import shutil
from pathlib import Path

from hftool.adapters import is_adapter_folder, merge
from hftool.errors import HftoolError
from hftool.loading import load_pretrained
from hftool.outputs import check_claim, claim_output_dir, move_into, record, releases_claims

FLAG = "ADAPTER_FOLDER"


@releases_claims
def run_merge(adapter: str | Path, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Merge the adapter of ``adapter`` into its base model and save the result in ``output_dir``."""
    folder = Path(adapter).expanduser()
    if not is_adapter_folder(folder):
        raise HftoolError(f"{FLAG} {adapter}: no adapter_config.json there; pass the output folder of a run with "
                          "adapter.kind=lora")
    inputs = {FLAG: str(folder)}
    out = check_claim(output_dir, "--output-dir", overwrite, inputs=inputs, what="a merged model")
    model, tokenizer = load_pretrained(lambda: merge(folder, FLAG), str(adapter), FLAG, "the adapter")
    claim_output_dir(out, "--output-dir", overwrite, inputs=inputs, what="a merged model")
    tmp = out / ".merge-tmp"
    record(out, tmp.name)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    move_into(tmp, out)
    return out
