"""``hftool env``: what this machine offers for training and inference."""

from __future__ import annotations

import typer


def env() -> None:
    """Print library versions, devices (CUDA, MPS, XLA/TPU), bf16 support, the accelerate config and Hub access.

    Example: hftool env
    """
    from hftool.environment import describe_environment

    for key, value in describe_environment().items():
        typer.echo(f"{key:24s} {value}")
