"""Partial work on an `s3://` root (a real S3-compatible server on 127.0.0.1). A staged piece is
reused only under the bucket's seal. Resume state: a writer of the
bucket who replaces a state file with a payload and rewrites its seal to match gets the state
discarded after the pull, never loaded; the same state, untouched, is pulled and resumed."""

from __future__ import annotations

import pytest

from tests.payloads import torch_payload
from tests.test_partial import _cfg, _interrupted
from tests.test_training_common import write_completions
from w2s.artifacts import ArtifactStore
from w2s.config import TrainingEngineConfig
from w2s.partial import SEALS, PartialFiles
from w2s.training.resume import RESUME_POINTER, read_resume
from w2s.writer import RemoteMirror

ROOT = "s3://w2s-test/resume-state"  # a bucket the s3 fixture makes (tests/conftest.py)


def _upload(store: ArtifactStore, key: str, out) -> None:
    for path in [*(out / ".resume").rglob("*"), *(out / SEALS / ".resume").rglob("*")]:
        if path.is_file():
            store.fs.put_file(str(path), store.remote_path("student", key, path.relative_to(out).as_posix()))


def _pulled(store: ArtifactStore, key: str, local) -> dict | None:
    """What a fresh pod reads: nothing local, every piece pulled from the bucket."""
    local.mkdir()
    pieces = PartialFiles(local, RemoteMirror(store, "student", key, local))
    return read_resume(local / ".resume", pieces)


def test_resume_state_planted_on_the_bucket_with_a_rewritten_seal_is_discarded(tmp_path, tiny_char_model_dir, s3, monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    data = write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    out = tmp_path / "killed"
    _interrupted(_cfg("weighted_mle"), TrainingEngineConfig(resume_every_steps=1), "weighted_mle", tiny_char_model_dir, data, out, at=4)
    store = ArtifactStore(ROOT)

    _upload(store, "genuine", out)
    assert _pulled(store, "genuine", tmp_path / "pod-a")["step"] == 4  # the bucket's state is read and trusted

    state = next((out / ".resume").glob("step-*/mp_rank_00_model_states.pt"))
    marker = tmp_path / "marker"
    state.write_bytes(torch_payload(marker))
    PartialFiles(out).seal(state.parent)  # a writer of the bucket rewrites the seal too
    _upload(store, "planted", out)
    assert _pulled(store, "planted", tmp_path / "pod-b") is None
    assert not marker.exists(), "a payload from the bucket ran"
    assert not store.fs.exists(store.remote_path("student", "planted", f".resume/{RESUME_POINTER}"))  # discarded there too


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_staged_piece_is_reused_only_under_the_buckets_seal(tmp_path, s3, monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    store = ArtifactStore("s3://w2s-test/staged-pieces")
    local = tmp_path / "staging"
    pieces = PartialFiles(local, RemoteMirror(store, "sampling", "k", local))
    shard = local / "shards" / "part-0.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"the run's shard")
    pieces.seal(shard)  # sealed here and pushed to the bucket
    shard.write_bytes(b"planted in the staging folder")
    PartialFiles(local).seal(shard)  # resealed here only: it matches its local seal
    assert pieces.reuse(shard) and shard.read_bytes() == b"the run's shard"  # the bucket's piece, pulled

    only_here = local / "shards" / "part-1.parquet"
    only_here.write_bytes(b"never pushed")
    PartialFiles(local).seal(only_here)
    assert not pieces.reuse(only_here) and not only_here.exists()
