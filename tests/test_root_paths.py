"""Whoever can write the artifact root cannot make a run write outside it: paths read from manifests
and seals stay inside their folder, planted symbolic links are refused rather than written through,
and files a stage did not write never become part of its artifact."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from w2s.artifacts import MANIFEST, STRAY, ArtifactChanged, ArtifactRef, ArtifactStore, FileEntry, Manifest
from w2s.config import PipelineConfig
from w2s.files import UnsafePath, inside
from w2s.partial import SEALS
from w2s.stage import Stage, StageOutput, execute
from w2s.writer import RemoteMirror

ESCAPES = ["/etc/passwd", "../outside", "a/../../outside", "./a", "a//b", "a\\..\\b", ""]


def _body(calls):
    def body(writer, run):
        calls.append(1)
        writer.write_parquet("shards/part-0.parquet", pa.table({"v": [1, 2, 3]}))
        return StageOutput({})

    return body


@pytest.mark.parametrize("path", ESCAPES)
def test_a_listed_path_that_leaves_its_folder_is_refused(path):
    with pytest.raises(UnsafePath):
        inside(path)
    with pytest.raises(ValueError):
        FileEntry(path=path, sha256="0" * 64, bytes=1)
    assert inside("shards/part-0.parquet") == "shards/part-0.parquet"


@pytest.mark.parametrize("escape", ["absolute", "parent"])
def test_a_remote_manifest_listing_a_path_outside_is_recomputed_never_downloaded_there(ctx, tmp_path, escape):
    remote = ctx.model_copy(update={"artifact_root": f"memory://w2s-escape-{escape}"})
    calls: list = []
    ref = execute(remote, Stage("t", 1), PipelineConfig().data, {}, _body(calls))
    store = ArtifactStore(remote.artifact_root)
    marker = tmp_path / "outside" / "marker"
    # the writer of the bucket lists a file of its own under a path that leaves the cache folder,
    # with every digest made to match
    listed = str(marker) if escape == "absolute" else "../../../../outside/marker"
    payload = b"planted"
    import hashlib

    entry = {"path": listed, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "rows": None}
    manifest = json.loads(store.fs.cat_file(store.remote_path("t", ref.key, MANIFEST)))
    manifest["files"].append(entry)
    manifest["digest"] = Manifest.content_digest([FileEntry.model_construct(**f) for f in manifest["files"]])
    store.fs.pipe_file(store.remote_path("t", ref.key, MANIFEST), json.dumps(manifest).encode())
    store.fs.pipe_file(store.remote_path("t", ref.key, listed), payload)  # where the listing points on the bucket

    fresh = ArtifactStore(remote.artifact_root)
    assert fresh.read_manifest("t", ref.key) is None and fresh.lookup("t", ref.key) is None
    # even handed a reference whose digest matches the planted listing (a forged record), nothing downloads
    forged = ArtifactRef(stage="t", key=ref.key, uri=ref.uri, digest=manifest["digest"])
    with pytest.raises(ArtifactChanged):
        fresh.materialise(forged, cache_dir=tmp_path / "cache")
    assert not marker.exists()
    again = execute(remote, Stage("t", 1), PipelineConfig().data, {}, _body(calls))
    fresh.materialise(again, cache_dir=tmp_path / "cache")
    assert calls == [1, 1] and again.digest == ref.digest
    assert not marker.exists() and not (tmp_path / "outside").exists()


def test_a_remote_seal_naming_files_outside_its_piece_pulls_nothing(tmp_path):
    store = ArtifactStore("memory://w2s-escape-seal")
    staging = tmp_path / "staging" / "t" / "k"
    mirror = RemoteMirror(store, "t", "k", staging)
    seal = {"piece": "shards/part-0.parquet", "files": {"../../../../outside": ["0" * 64, 7]}}
    store.fs.pipe_file(store.remote_path("t", "k", f"{SEALS}/shards/part-0.parquet.json"), json.dumps(seal).encode())
    store.fs.pipe_file(store.remote_path("t", "k", "outside"), b"planted")
    assert mirror.pull("shards/part-0.parquet") is False
    assert not (tmp_path / "outside").exists() and not any(tmp_path.rglob("outside"))


def test_a_planted_lock_link_is_refused_and_its_target_untouched(ctx, tmp_path):
    cfg = PipelineConfig().data
    key = Stage("t", 1).key(cfg, {})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    locks = tmp_path / "artifacts" / "t" / ".locks"
    locks.mkdir(parents=True)
    (locks / f"{key}.lock").symlink_to(victim)
    calls: list = []
    with pytest.raises(UnsafePath, match="symbolic link"):
        execute(ctx, Stage("t", 1), cfg, {}, _body(calls))
    assert victim.read_text() == "precious\n" and calls == []


def test_a_planted_link_in_place_of_the_lock_folder_is_refused(ctx, tmp_path):
    cfg = PipelineConfig().data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "artifacts" / "t").mkdir(parents=True)
    (tmp_path / "artifacts" / "t" / ".locks").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath, match="symbolic link"):
        execute(ctx, Stage("t", 1), cfg, {}, _body([]))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["stage folder", "artifact folder", "inside the artifact folder"])
def test_a_planted_link_on_the_way_to_a_stages_files_is_refused(ctx, tmp_path, where):
    cfg = PipelineConfig().data
    key = Stage("t", 1).key(cfg, {})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = {"stage folder": "t", "artifact folder": f"t/{key}", "inside the artifact folder": f"t/{key}/shards"}[where]
    (tmp_path / "artifacts" / link).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "artifacts" / link).symlink_to(elsewhere, target_is_directory=True)
    calls: list = []
    with pytest.raises(UnsafePath, match="symbolic link"):
        execute(ctx, Stage("t", 1), cfg, {}, _body(calls))
    assert list(elsewhere.iterdir()) == [] and calls == []


def test_a_planted_mlflow_init_lock_link_is_refused(tmp_path):
    from w2s import tracking

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    db = tmp_path / "root" / "mlflow.db"
    db.parent.mkdir()
    (db.parent / f".{db.name}.init.lock").symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        tracking._client(f"sqlite:///{db}")
    assert victim.read_text() == "precious\n"


def test_a_stray_file_beside_the_shards_never_joins_the_recomputed_artifact(ctx):
    cfg = PipelineConfig().data
    calls: list = []
    ref = execute(ctx, Stage("t", 1), cfg, {}, _body(calls))
    folder = ref.local_dir()
    stray = folder / "shards" / "part-0 (copy).parquet"
    stray.write_bytes((folder / "shards" / "part-0.parquet").read_bytes())
    (folder / MANIFEST).unlink()  # the stage is recomputed in the folder that holds the copy

    again = execute(ctx, Stage("t", 1), cfg, {}, _body(calls))
    listed = [entry.path for entry in ArtifactStore(ctx.artifact_root).read_manifest("t", again.key).files]
    assert listed == ["shards/part-0.parquet"] and again.digest == ref.digest
    assert not stray.exists() and (folder / STRAY / "shards" / "part-0 (copy).parquet").exists()  # set aside, not lost
    assert execute(ctx, Stage("t", 1), cfg, {}, _body(calls)) == again and calls == [1, 1]


@pytest.mark.parametrize("planted", ["link", "open_to_others", "other_user"])
def test_staging_and_locks_of_remote_roots_live_in_a_private_folder(tmp_path, monkeypatch, planted):
    """Staging (resume state a run unpickles) and lock files of `s3://` roots sit in the shared temp
    dir: in `w2s-<uid>`, made 0700, and a folder of that name someone else prepared is refused."""
    import os

    from w2s.files import private_folder
    from w2s.writer import staging_dir

    monkeypatch.setenv("W2S_STAGING_DIR", str(tmp_path / "shared"))
    store = ArtifactStore("memory://w2s-private")
    mine = staging_dir(store, "t", "k")
    folder = tmp_path / "shared" / f"w2s-{os.getuid()}"
    assert mine.is_relative_to(folder) and (folder.stat().st_mode & 0o777) == 0o700

    other = tmp_path / "other"
    other.mkdir()
    target = other / f"w2s-{os.getuid()}"
    if planted == "link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        target.symlink_to(elsewhere, target_is_directory=True)
    else:
        target.mkdir(mode=0o700)
        if planted == "open_to_others":
            target.chmod(0o777)
        elif os.getuid() == 0:
            os.chown(target, 65534, 65534)  # nobody
        else:
            pytest.skip("making a folder another user's needs root")
    with pytest.raises(UnsafePath, match="private folder"):
        private_folder(other)
    monkeypatch.setenv("TMPDIR", str(other))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(other))
    with pytest.raises(UnsafePath, match="private folder"):
        with store.lock("t", "k"):
            pass


def test_a_pickled_checkpoint_planted_in_a_model_folder_is_refused_not_loaded(tmp_path, tiny_char_model_dir):
    import shutil

    from tests.payloads import torch_payload
    from w2s.models.build import load_pretrained

    folder = tmp_path / "model"
    shutil.copytree(tiny_char_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    (folder / "pytorch_model.bin").write_bytes(torch_payload(marker))
    with pytest.raises(OSError, match="safetensors"):
        load_pretrained(folder)
    assert not marker.exists()
