"""Training listens on the loopback interface only: the ranks of one machine meet through a private
file store, not torch's TCPStore (which listens on every interface for as long as the process group
lives). Checked with `ss -ltnp` while training runs, in one process and with 2 ranks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading

import pytest

from tests.test_training_common import write_completions

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")

TRAIN_THEN_LIST = """
import os, subprocess, sys
from w2s.config import TrainConfig, TrainingEngineConfig
from w2s.training import train
cfg = TrainConfig(learning_rate=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=4, max_steps=1, checkpoint_fractions=[1.0])
train(cfg, TrainingEngineConfig(), "sft", sys.argv[1], [sys.argv[2]], sys.argv[3], progress=False)
print("PID", os.getpid())
print(subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout)
"""


def listeners(ss_output: str) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket `ss -ltnpH` shows with its process."""
    found = []
    for line in ss_output.splitlines():
        fields = line.split()
        for pid in re.findall(r"pid=(\d+)", line):
            found.append((int(pid), fields[3]))
    return found


def is_loopback(address: str) -> bool:
    return address.startswith(("127.", "[::1]", "[::ffff:127."))


def test_one_process_training_listens_on_loopback_only(tmp_path, tiny_char_model_dir):
    data = write_completions(tmp_path / "d.parquet")
    done = subprocess.run([sys.executable, "-c", TRAIN_THEN_LIST, str(tiny_char_model_dir), str(data), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pid = int(re.search(r"^PID (\d+)$", done.stdout, re.M).group(1))
    own = [address for owner, address in listeners(done.stdout) if owner == pid]
    assert [a for a in own if not is_loopback(a)] == [], own


def _rank_pids() -> set[int]:
    found = set()
    for line in subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "w2s.training.rank" in args and "deepspeed.launcher" not in args:
            found.add(int(pid))
    return found


@pytest.mark.slow
def test_two_ranks_listen_on_loopback_only(tmp_path, tiny_char_model_dir):
    from w2s.config import TrainConfig, TrainingEngineConfig
    from w2s.training import train

    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            ranks = _rank_pids()
            if ranks:
                out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
                seen.extend((pid, address) for pid, address in listeners(out) if pid in ranks)
            stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=2, max_steps=2, checkpoint_fractions=[1.0])
    try:
        train(cfg, TrainingEngineConfig(world_size=2, precision="fp32"), "sft", tiny_char_model_dir,
              [write_completions(tmp_path / "d.parquet")], tmp_path / "out", progress=False)
    finally:
        stop.set()
        watcher.join()
    assert seen, "no rank was seen listening: the watch saw nothing, so it proves nothing"
    assert [entry for entry in seen if not is_loopback(entry[1])] == [], sorted(set(seen))


def test_a_store_is_used_only_by_the_group_it_was_made_for(monkeypatch):
    """The store travels in the environment; ranks of another launcher that inherit it (torchrun, the
    multi-node Job's pods, which also set it empty) have another MASTER_PORT and meet over env:// instead."""
    from w2s.training.rendezvous import RENDEZVOUS_ENV, rendezvous_store

    monkeypatch.setenv(RENDEZVOUS_ENV, "4242:/private/store")
    monkeypatch.setenv("MASTER_PORT", "4242")
    assert rendezvous_store() == "/private/store"
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert rendezvous_store() is None
    monkeypatch.setenv(RENDEZVOUS_ENV, "")
    assert rendezvous_store() is None


def test_rendezvous_folders_of_killed_runs_are_swept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from w2s.files import private_folder
    from w2s.training.rendezvous import private_rendezvous_file

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    base = private_folder()
    left = base / f"rendezvous-{dead.stdout.strip()}-abc"  # a SIGKILLed run's, whose atexit never ran
    left.mkdir()
    alive = base / f"rendezvous-{os.getppid()}-def"
    alive.mkdir()
    mine = private_rendezvous_file()
    assert not left.exists() and alive.exists() and os.path.dirname(mine).startswith(str(base / f"rendezvous-{os.getpid()}-"))
