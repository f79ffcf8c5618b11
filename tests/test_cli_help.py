"""`w2s --help`, every subcommand's `--help` and `--version` exit 0 with their text; a reader that
leaves early (`w2s stages | head -1`) ends the command quietly, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

W2S = [sys.executable, "-m", "w2s.cli"]


def _subcommands(parser, prefix: str = "") -> list[str]:
    """Every subcommand the parser knows, nested ones included (read from the parser itself)."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [f"{prefix}{name}", *_subcommands(sub, f"{prefix}{name} ")]
    return found


def _all_subcommands() -> list[str]:
    from w2s.cli import build_parser

    return _subcommands(build_parser())


SUBCOMMANDS = _all_subcommands()
assert {"run", "plan", "train", "config show", "report"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help_exits_0(command):
    out = subprocess.run(W2S + command.split() + ["--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: w2s") and "Traceback" not in out.stderr


def test_version():
    out = subprocess.run(W2S + ["--version"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("w2s 0."), out


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_closed_pipe_ends_quietly(unbuffered):
    # `true` exits at once without reading, so w2s writes into a pipe whose reader has gone; with a
    # block-buffered stdout (no PYTHONUNBUFFERED, as in CI) the error comes at the flush
    shell = f"{sys.executable} -m w2s.cli stages --flow baselines | true"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == 0
