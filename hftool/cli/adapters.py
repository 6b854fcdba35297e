"""``hftool adapters``: work with the LoRA adapter folders that fine-tunes with ``adapter.kind=lora`` write."""

from __future__ import annotations

import typer

app = typer.Typer(help="Work with LoRA adapter folders (runs with adapter.kind=lora).", no_args_is_help=True)


@app.command("merge")
def merge(
    adapter: str = typer.Argument(..., help="Adapter folder (adapter_config.json + adapter_model.safetensors)."),
    output_dir: str = typer.Option(..., "--output-dir", "-o", help="Folder for the merged model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a merged model hftool wrote there."),
) -> None:
    """Merge an adapter into its base model: an ordinary model folder that plain transformers loads.

    Example:

      hftool adapters merge runs/classify-sst2-minilm-lora -o runs/classify-sst2-minilm-merged
    """
    from hftool.runs.adapters import run_merge

    out = run_merge(adapter, output_dir, overwrite)
    typer.echo(f"wrote the merged model to {out}")
