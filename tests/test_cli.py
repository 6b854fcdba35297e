"""The command line: every command has help with an example; env; model resolution offline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from helpers import REPO, run_cli

from hftool.cli import app
from hftool.errors import HftoolError
from hftool.hub import ALIASES, resolve_model


def _commands(group, prefix=()):
    if hasattr(group, "commands"):
        for name, command in group.commands.items():
            yield from _commands(command, (*prefix, name))
    else:
        yield prefix


COMMANDS = sorted(_commands(typer.main.get_command(app)))


def test_top_level_help_lists_every_command():
    code, out, _ = run_cli(["--help"])
    assert code == 0
    for command in {c[0] for c in COMMANDS}:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command):
    code, out, _ = run_cli([*command, "--help"])
    assert code == 0
    assert "example" in out.lower(), f"'hftool {' '.join(command)} --help' shows no example"
    assert f"hftool {' '.join(command)}" in " ".join(out.split()), "the example must use the command itself"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_prints_every_example_intact(command):
    """Rich markup must not eat parts of an example (an unescaped '[corpus.txt]' vanishes as a style tag)."""
    callback = typer.main.get_command(app)
    for name in command:
        callback = callback.commands[name]
    examples = [" ".join(line.split()).replace("\\[", "[") for line in callback.callback.__doc__.splitlines()
                if line.strip().startswith("hftool ")]
    _, out, _ = run_cli([*command, "--help"])
    for example in examples:
        assert example in " ".join(out.split()), f"'hftool {' '.join(command)} --help' mangles: {example}"


def test_env_reports_devices_precision_and_hub():
    code, out, _ = run_cli(["env"])
    assert code == 0
    for field in ("torch", "transformers", "cuda", "mps", "xla/tpu", "bf16 usable", "accelerate config",
                  "hugging face hub"):
        assert field in out
    assert "offline mode on" in out  # the test session sets HF_HUB_OFFLINE=1


def _record_connections(monkeypatch) -> list[tuple]:
    """Every TCP connection attempted from here on, refused at once (nothing may reach the network in tests)."""
    import socket

    attempts = []

    def refuse(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("connection refused by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_alias_resolution_offline_is_clear_and_touches_no_network(monkeypatch):
    assert ALIASES["bloom-560m"] == "bigscience/bloom-560m"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = _record_connections(monkeypatch)
    with pytest.raises(HftoolError) as info:
        resolve_model("bloom-560m")
    assert attempts == []  # offline mode answers from the local cache alone: no probe, no retries
    message = str(info.value)
    assert "bigscience/bloom-560m" in message and "local" in message and "\n" not in message


def test_unreachable_hub_without_offline_mode_fails_after_one_short_probe(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    from hftool import hub

    hub.hub_reachable.cache_clear()
    attempts = _record_connections(monkeypatch)
    with pytest.raises(HftoolError, match="cannot be reached"):
        resolve_model("gpt2-medium")
    hub.hub_reachable.cache_clear()
    # What "fails fast" means: one connection to the endpoint, bounded by the probe's short timeout, and no
    # download attempt (huggingface_hub's retries) after it.
    assert attempts == [(("127.0.0.1", 9), hub.HUB_PROBE_TIMEOUT_S)]
    assert hub.HUB_PROBE_TIMEOUT_S <= 5


def test_local_folder_and_bad_paths(tiny_gpt2, tmp_path):
    assert resolve_model(str(tiny_gpt2)).name_or_path == str(tiny_gpt2)
    with pytest.raises(HftoolError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(HftoolError, match="no such folder"):
        resolve_model("./does/not/exist")


@pytest.mark.integration
def test_python_dash_m_and_one_line_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "hftool", "pretrain", "model.init_from=bloom-560m",
                             f"train.output_dir={tmp_path / 'out'}", "model.config={}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "bigscience/bloom-560m" in lines[-1]
    assert len([line for line in lines if line.startswith("error:")]) == 1
