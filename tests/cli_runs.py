"""`w2s run` of configs/tiny.yaml up to the student in a child process, as the resume, integrity and
remote-root tests start it (no tests here). The child gets its own process group and writes to
files, not pipes: a SIGKILLed run leaves its embedded Prefect server alive, which would hold a pipe
open; the whole group is killed once the run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from flows.stages import EVE_TRAINING as STAGES  # evaluation after the student is not what these test
from tests.conftest import REPO

SETTINGS = ["--set", "sampling.shard_rows=4", "--set", "engines.training.resume_every_steps=1"]


def tiny_run_args(root, *extra: str) -> list[str]:
    return [sys.executable, "-m", "w2s.cli", "run", "--config", str(REPO / "configs" / "tiny.yaml"),
            "--set", f"run.artifact_root={root}", "--until", "student", *SETTINGS, *extra]


def child_env(die_at: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "W2S_DIE_AT"}
    return {**env, **({"W2S_DIE_AT": die_at} if die_at else {}), **extra}


def start(args: list[str], cwd: Path, env: dict[str, str], logs: Path) -> subprocess.Popen:
    """Starts the run; its stdout/stderr go to `<logs>.out` / `<logs>.err`."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(f"{logs}.out", "w") as stdout, open(f"{logs}.err", "w") as stderr:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)


def finish(proc: subprocess.Popen, logs: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    try:
        returncode = proc.wait(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, returncode, Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text())


def run_tiny(root: Path, die_at: str | None = None) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return finish(start(tiny_run_args(root), root.parent, child_env(die_at), root.parent / root.name), root.parent / root.name)


def stage_table(stdout: str) -> dict[str, str]:
    """{stage: hit | miss} from the table `w2s run` prints."""
    return {line.split()[0]: line.split()[1] for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES}
