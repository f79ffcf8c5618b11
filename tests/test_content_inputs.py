"""Local inputs enter cache keys by content (w2s/content.py): editing a local data file or replacing
a local model folder reruns the stages that read them; the same content at the same path hits."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data import DataSlice, data as prepare_data
from w2s.config import DataConfig, GoldRewardSpec, ModelSpec, TrainingEngineConfig
from w2s.content import content_digests
from w2s.stage import Stage, collect_outcomes


def _prefs(path, marker: str):
    rows = [{"prompt": f"POST: story {i}\nTL;DR:", "chosen": f" good {marker} {i}", "rejected": f" bad {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_editing_a_local_data_file_reruns_the_data_stage(ctx, tmp_path):
    data_file = tmp_path / "prefs.parquet"
    _prefs(data_file, "v1")
    cfg = DataConfig(source="hf", n_preference=10, n_weak_demo=5, n_exemplar_pool=2, n_student=5, n_test=5,
                     hf={"path": "parquet", "data_files": str(data_file)})
    with collect_outcomes() as outcomes:
        first = prepare_data.run(ctx, DataSlice(data=cfg))
        again = prepare_data.run(ctx, DataSlice(data=cfg))
        _prefs(data_file, "v2")  # same path, same size class, other content
        edited = prepare_data.run(ctx, DataSlice(data=cfg))
    assert [o.cache for o in outcomes] == ["miss", "hit", "miss"]
    assert again == first and edited.key != first.key and edited.digest != first.digest
    chosen = pq.read_table(edited.local_dir() / "preferences.parquet").column("chosen").to_pylist()
    assert all(" v2 " in c for c in chosen)


def test_replacing_a_local_model_folder_changes_the_key_and_same_content_does_not(tmp_path, tiny_char_model_dir, tiny_smollm_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_char_model_dir, folder)
    stage = Stage("strong_base", 1)
    spec = ModelSpec(source="hf", path=str(folder))
    before = stage.key(spec, {})
    shutil.rmtree(folder)
    shutil.copytree(tiny_smollm_model_dir, folder)
    replaced = stage.key(spec, {})
    shutil.rmtree(folder)
    shutil.copytree(tiny_char_model_dir, folder)  # a fresh copy: new inodes and mtimes, same bytes
    restored = stage.key(spec, {})
    assert replaced != before and restored == before


def test_which_fields_are_keyed_by_content(tmp_path):
    reward = tmp_path / "rm"
    reward.mkdir()
    (reward / "config.json").write_text("{}")
    ds_json = tmp_path / "zero0.json"
    ds_json.write_text('{"zero_optimization": {"stage": 0}}')
    found = content_digests(GoldRewardSpec(kind="hf_classifier", path=str(reward)))
    assert list(found) == ["content:path"]
    assert list(content_digests(TrainingEngineConfig(deepspeed_config=str(ds_json)))) == ["content:deepspeed_config"]
    # a hub name or builder name is no local content: the string in the config slice is the key
    assert content_digests(ModelSpec(source="hf", path="HuggingFaceTB/SmolLM2-135M")) == {}
    assert content_digests(DataConfig(source="hf", hf={"path": "parquet", "data_files": str(tmp_path / "*.parquet")})) == {}
    _prefs(tmp_path / "a.parquet", "x")
    globbed = content_digests(DataConfig(source="hf", hf={"path": "parquet", "data_files": str(tmp_path / "*.parquet")}))
    assert list(globbed) == ["content:hf.data_files"]
