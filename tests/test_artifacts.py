"""The artifact/cache contract of DESIGN.md, against the real store (no Prefect needed)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pyarrow as pa
import pytest

from w2s.artifacts import MANIFEST, ArtifactStore, Manifest, cache_key
from w2s.config import PipelineConfig
from w2s.stage import Stage, StageOutput, config_slice, execute
from w2s.writer import StageWriter

KEY_SCRIPT = """
import sys
from w2s.config.loading import load_config
from w2s.stage import Stage
cfg = load_config(None, sys.argv[1:])
print(Stage("weights", 1).key(cfg.weights, {}), Stage("data", 1).key(cfg.data, {}))
"""


def _keys_in_fresh_process(*overrides: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", KEY_SCRIPT, *overrides], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_cache_key_is_stable_across_processes_and_hash_seeds():
    here = [Stage("weights", 1).key(PipelineConfig().weights, {}), Stage("data", 1).key(PipelineConfig().data, {})]
    assert _keys_in_fresh_process() == here
    assert _keys_in_fresh_process("sampling.k=8") == here  # neither stage reads sampling


def test_cache_key_changes_only_with_what_the_stage_reads():
    base = PipelineConfig()
    changed = base.model_copy(update={"weights": base.weights.model_copy(update={"beta_over_lambda": 2.0})})
    weights, data = Stage("weights", 1), Stage("data", 1)
    assert weights.key(changed.weights, {}) != weights.key(base.weights, {})
    assert data.key(changed.data, {}) == data.key(base.data, {})
    assert Stage("weights", 2).key(base.weights, {}) != weights.key(base.weights, {})  # code version


def test_cache_key_matches_an_independent_sha256():
    payload = json.dumps(
        {"config": {"a": 1, "b": [1, 2]}, "inputs": {"x": "d1"}, "stage": "s", "version": 3},
        sort_keys=True, separators=(",", ":"),
    )
    assert cache_key("s", 3, {"b": [1, 2], "a": 1}, {"x": "d1"}) == hashlib.sha256(payload.encode()).hexdigest()[:20]


def test_input_digest_feeds_the_key(ctx):
    cfg = PipelineConfig().data
    first = execute(ctx, Stage("up", 1), cfg, {}, _table_body(range(3)))
    other = execute(ctx, Stage("up2", 1), cfg, {}, _table_body(range(4)))
    stage = Stage("down", 1)
    assert stage.key(cfg, {"x": first}) != stage.key(cfg, {"x": other})


def test_infinite_beta_over_lambda_keys_differently_from_unset():
    cfg = PipelineConfig().weights
    inf = cfg.model_copy(update={"beta_over_lambda": float("inf")})
    assert config_slice(inf)["beta_over_lambda"] == float("inf")
    assert Stage("weights", 1).key(inf, {}) != Stage("weights", 1).key(cfg, {})


def _table_body(values, calls=None):
    def body(writer, run):
        if calls is not None:
            calls.append(1)
        writer.write_parquet("part-0.parquet", pa.table({"v": list(values)}))
        return StageOutput({"n": len(list(values))})

    return body


def test_manifest_lists_files_with_digests_and_rows(ctx):
    ref = execute(ctx, Stage("t", 1), PipelineConfig().data, {}, _table_body(range(5)))
    manifest = Manifest.model_validate_json((ref.local_dir() / MANIFEST).read_text())
    entry = manifest.files[0]
    assert entry.path == "part-0.parquet" and entry.rows == 5 and ref.rows == 5
    assert entry.sha256 == hashlib.sha256((ref.local_dir() / entry.path).read_bytes()).hexdigest()
    assert manifest.stage == "t" and manifest.version == 1 and manifest.config == config_slice(PipelineConfig().data)
    assert manifest.digest == ref.digest


def test_second_execute_reuses_the_artifact(ctx):
    calls: list = []
    cfg = PipelineConfig().data
    first = execute(ctx, Stage("t", 1), cfg, {}, _table_body(range(5), calls))
    second = execute(ctx, Stage("t", 1), cfg, {}, _table_body(range(5), calls))
    assert calls == [1] and first == second


def test_crash_between_shard_write_and_manifest_leaves_stage_not_done(ctx):
    calls: list = []

    def crashing(writer, run):
        writer.write_parquet("part-0.parquet", pa.table({"v": [1, 2]}))
        raise RuntimeError("killed before the manifest")

    cfg = PipelineConfig().data
    with pytest.raises(RuntimeError):
        execute(ctx, Stage("t", 1), cfg, {}, crashing)
    store = ArtifactStore(ctx.artifact_root)
    key = Stage("t", 1).key(cfg, {})
    assert (store.local_root / "t" / key / "part-0.parquet").exists()  # whole shard kept for resume
    assert store.read_manifest("t", key) is None and store.lookup("t", key) is None
    execute(ctx, Stage("t", 1), cfg, {}, _table_body([1, 2], calls))
    assert calls == [1] and store.lookup("t", key) is not None


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_damaged_shard_is_detected_and_recomputed(ctx, damage):
    calls: list = []
    cfg = PipelineConfig().data
    ref = execute(ctx, Stage("t", 1), cfg, {}, _table_body(range(50), calls))
    shard = ref.local_dir() / "part-0.parquet"
    data = bytearray(shard.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:-10]))
    else:
        shard.unlink()
    store = ArtifactStore(ctx.artifact_root)
    assert store.lookup("t", ref.key) is None
    again = execute(ctx, Stage("t", 1), cfg, {}, _table_body(range(50), calls))
    assert calls == [1, 1] and again.digest == ref.digest


def test_no_temp_files_survive_a_folder_write_that_fails(ctx):
    store = ArtifactStore(ctx.artifact_root)
    with pytest.raises(ValueError):
        with StageWriter(store, "m", "k", 1, {}, {}) as writer:
            with writer.folder("model") as folder:
                (folder / "weights.bin").write_bytes(b"half")
                raise ValueError("save failed")
    assert not any((store.local_root / "m" / "k").iterdir())


def test_remote_root_through_fsspec_memory_filesystem(ctx):
    remote = ctx.model_copy(update={"artifact_root": "memory://w2s-test-root"})
    calls: list = []
    ref = execute(remote, Stage("t", 1), PipelineConfig().data, {}, _table_body(range(7), calls))
    assert ref.uri.startswith("memory://") and ref.rows == 7
    local = ArtifactStore(remote.artifact_root).materialise(ref)
    import pyarrow.parquet as pq

    assert pq.read_table(local / "part-0.parquet").num_rows == 7
    execute(remote, Stage("t", 1), PipelineConfig().data, {}, _table_body(range(7), calls))
    assert calls == [1]


def test_remote_copies_of_one_stage_and_key_with_other_bytes_never_share_a_folder(ctx, tmp_path):
    """Two roots (two clusters, or a rerun whose training is not bitwise reproducible) can hold the
    same stage and key with different files: each run reads exactly its own artifact's bytes, even
    when both go through one local cache, and a file of the other never sits beside them."""
    import pyarrow.parquet as pq

    def body(name, values):
        def write(writer, run):
            writer.write_parquet("part-0.parquet", pa.table({"v": values}))
            writer.write_bytes(name, b"only in this artifact")
            return StageOutput({})
        return write

    refs = [execute(ctx.model_copy(update={"artifact_root": f"memory://w2s-root-{i}"}), Stage("t", 1), PipelineConfig().data,
                    {}, body(f"extra-{i}.bin", values)) for i, values in enumerate(([1, 2], [3, 4]))]
    assert refs[0].key == refs[1].key and refs[0].digest != refs[1].digest
    folders = [ArtifactStore(ref.uri.rsplit("/t/", 1)[0]).materialise(ref, cache_dir=tmp_path) for ref in refs]
    folders.append(ArtifactStore(refs[0].uri.rsplit("/t/", 1)[0]).materialise(refs[0], cache_dir=tmp_path))  # read again
    assert [pq.read_table(f / "part-0.parquet").column("v").to_pylist() for f in folders] == [[1, 2], [3, 4], [1, 2]]
    assert sorted(p.name for p in folders[0].iterdir() if p.is_file()) == ["extra-0.bin", MANIFEST, "part-0.parquet"]
