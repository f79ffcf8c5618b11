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


def test_the_run_summary_ends_with_the_reports_headline_and_pgr_table(tmp_path):
    """The console's last lines are the science (the report's headline and PGR table), after the stage
    table and the MLflow pointer; an MLflow server is a URL to open, not a `mlflow ui` to start."""
    import shutil
    from types import SimpleNamespace

    from w2s.cli import summary_table

    report = tmp_path / "report" / "k"
    report.mkdir(parents=True)
    source = REPO / "docs" / "results" / "redesigned-default-seeds" / "report.md"
    shutil.copy(source, report / "report.md")
    rows = [SimpleNamespace(stage="report", cache="miss", wall_s=0.3, uri=str(report))]
    state = SimpleNamespace(rows=rows, ctx=SimpleNamespace(parent_run_id="abc"))
    cfg = SimpleNamespace(tracking_uri="http://127.0.0.1:5000", run=SimpleNamespace(experiment="w2s-eve"))
    lines = summary_table(state, cfg, 1.0).splitlines()
    markdown = source.read_text().splitlines()
    header = markdown.index(next(line for line in markdown if line.startswith("| policy")))
    end = next(i for i in range(header, len(markdown)) if not markdown[i].startswith("|"))
    headline = next(line for line in markdown if line.startswith("**EVE")).replace("**", "")
    assert lines[-(end - header) - 2:] == ["", headline, *markdown[header:end]]  # last: the headline and the PGR table
    assert "MLflow: http://127.0.0.1:5000" in lines and not any("mlflow ui" in line for line in lines)


def test_report_on_a_root_without_the_flow_names_what_it_will_compute_first(tmp_path, monkeypatch, capsys):
    """`w2s report` after `make run` used to train three baselines without a word (it defaulted to the
    baselines flow): it now defaults to the eve flow and names every stage it must compute first."""
    import w2s.cli as cli
    from flows.stages import stages_of
    from w2s.config.loading import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run.artifact_root={tmp_path / 'art'}"])
    assert cli.build_parser().parse_args(["report", "--config", "tiny"]).flow == "eve"
    monkeypatch.setattr(cli, "_run_flow", lambda *a, **k: None)  # stop where the computing would start
    assert cli.write_report(cfg, "eve", str(tmp_path / "out")) == 1
    said = capsys.readouterr().err
    assert f"{len(stages_of('eve'))} stage(s) of the eve flow are not in the artifact root and run first" in said
    assert "student" in said and "dpo_weak_reward" not in said
