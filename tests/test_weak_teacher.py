"""Weak teacher stages on the smoke profile: weak_sft → weak_dpo → weak_demos, caching, bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO
from w2s.config.loading import load_config
from w2s.models.build import load_pretrained
from w2s.stage import collect_outcomes


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from tasks.base_models import weak_base
    from tasks.data import DataSlice, data as prepare_data
    from tasks.weak_demos import WeakDemosSlice, weak_demos
    from tasks.weak_dpo import weak_dpo
    from tasks.weak_sft import weak_sft
    from w2s.train_stage import training_slice

    root = tmp_path_factory.mktemp("weak")
    config = load_config(REPO / "configs" / "tiny.yaml", [f"run.artifact_root={root}"])
    ctx = config.run_context()
    data = prepare_data.run(ctx, DataSlice(data=config.data))
    base = weak_base.run(ctx, config.models.weak)
    sft = weak_sft.run(ctx, training_slice(config.weak_sft, config), data=data, base=base)
    dpo = weak_dpo.run(ctx, training_slice(config.weak_dpo, config), data=data, weak_ref=sft)
    demos = weak_demos.run(ctx, WeakDemosSlice.from_pipeline(config), data=data, weak=dpo, weak_ref=sft)
    return {"config": config, "ctx": ctx, "data": data, "base": base, "sft": sft, "dpo": dpo, "demos": demos}


def _params(folder):
    model, _ = load_pretrained(folder)
    return dict(model.named_parameters())


def test_each_training_stage_changes_every_parameter(tiny_pipeline):
    base = _params(tiny_pipeline["base"].local_dir() / "model")
    sft = _params(tiny_pipeline["sft"].local_dir() / "model")
    dpo = _params(tiny_pipeline["dpo"].local_dir() / "model")
    assert set(base) == set(sft) == set(dpo)
    for name in base:
        assert not torch.equal(base[name], sft[name]), f"weak_sft left {name} unchanged"
        assert not torch.equal(sft[name], dpo[name]), f"weak_dpo left {name} unchanged"


def test_sft_trains_on_chosen_and_dpo_keeps_reference_logps(tiny_pipeline):
    sft_dir, dpo_dir = tiny_pipeline["sft"].local_dir(), tiny_pipeline["dpo"].local_dir()
    prefs = pq.read_table(tiny_pipeline["data"].local_dir() / "preferences.parquet")
    chosen = pq.read_table(sft_dir / "train" / "chosen.parquet")
    assert chosen.column("completion").to_pylist() == prefs.column("chosen").to_pylist()
    manifest = json.loads((dpo_dir / "manifest.json").read_text())
    assert any("ref" in f["path"] and f["path"].endswith(".parquet") for f in manifest["files"]), manifest["files"]
    assert manifest["config"]["train"]["beta"] == tiny_pipeline["config"].weak_dpo.beta
    assert manifest["inputs"]["weak_ref"] == tiny_pipeline["sft"].digest


def test_weak_demos_outputs(tiny_pipeline):
    folder, config = tiny_pipeline["demos"].local_dir(), tiny_pipeline["config"]
    exemplars = pq.read_table(folder / "exemplars.parquet")
    demos = pq.read_table(folder / "weak_demos.parquet")
    data = tiny_pipeline["data"].local_dir()
    pool = set(pq.read_table(data / "exemplar.parquet").column("prompt_id").to_pylist())
    student = set(pq.read_table(data / "student.parquet").column("prompt_id").to_pylist())
    ids = exemplars.column("prompt_id").to_pylist()
    assert exemplars.num_rows == config.data.n_exemplar_pool and set(ids) == pool and not set(ids) & student
    assert demos.num_rows == config.data.n_weak_demo
    assert {"prompt_id", "prompt", "response", "n_tokens"} <= set(demos.column_names)
    evaluated = pq.read_table(folder / "eval.parquet").to_pylist()
    assert {r["policy"] for r in evaluated} == {"weak", "weak_ref"}
    from w2s.rewards import SummaryFactsReward

    recomputed = SummaryFactsReward().score([r["prompt"] for r in evaluated], [r["response"] for r in evaluated],
                                            [r["meta"] for r in evaluated])
    assert recomputed.tolist() == pytest.approx([r["gold_reward"] for r in evaluated])
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert {"gold_reward_test_weak", "gold_reward_test_weak_ref", "gold_reward_d_weak"} <= set(metrics)


def test_changing_dpo_beta_reruns_weak_dpo_but_not_weak_sft(tiny_pipeline):
    from tasks.weak_dpo import weak_dpo
    from tasks.weak_sft import weak_sft
    from w2s.train_stage import training_slice

    config = tiny_pipeline["config"]
    changed = load_config(REPO / "configs" / "tiny.yaml", [f"run.artifact_root={config.run.artifact_root}", "weak_dpo.beta=0.3"])
    ctx = tiny_pipeline["ctx"]
    with collect_outcomes() as outcomes:
        sft = weak_sft.run(ctx, training_slice(changed.weak_sft, changed), data=tiny_pipeline["data"], base=tiny_pipeline["base"])
        dpo = weak_dpo.run(ctx, training_slice(changed.weak_dpo, changed), data=tiny_pipeline["data"], weak_ref=sft)
    assert sft == tiny_pipeline["sft"] and dpo.key != tiny_pipeline["dpo"].key
    assert [(o.stage, o.key, o.cache) for o in outcomes] == [("weak_sft", sft.key, "hit"), ("weak_dpo", dpo.key, "miss")]


def test_bad_preferences_named_before_training(ctx):
    from tasks.weak_sft import weak_sft
    from w2s.config import ModelSpec
    from w2s.stage import Stage, StageOutput, execute
    from w2s.train_stage import training_slice

    config = load_config(REPO / "configs" / "tiny.yaml")

    def bad_data(writer, run):
        writer.write_parquet("preferences.parquet", pa.table({
            "prompt_id": ["a", "b"], "prompt": ["x\nTL;DR:", "y\nTL;DR:"], "chosen": [" good", " same"],
            "rejected": [" bad", " same"], "meta": ["{}", "{}"]}))
        return StageOutput({})

    data = execute(ctx, Stage("data", 99), config.data, {}, bad_data)
    base = execute(ctx, Stage("weak_base", 99), ModelSpec(), {}, lambda w, r: StageOutput({}))
    with pytest.raises(ValueError, match=r"rows \[1\] have empty or identical chosen/rejected"):
        weak_sft.run(ctx, training_slice(config.weak_sft, config), data=data, base=base)


def test_matched_demos_answer_every_student_prompt_k_times_and_naive_sft_trains_on_them(tiny_pipeline):
    """Fig. 6's equal training size: π_weak's K answers to EVE's own student prompts, n_student·K
    rows, each with its prompt's text and meta, the gold reward of its own text; the draw is the
    run seed's (another seed changes answers), and naive SFT takes the table as it takes D_weak."""
    from tasks.matched_demos import MatchedDemosSlice, matched_demos
    from tasks.naive_sft import naive_sft
    from w2s.rewards import SummaryFactsReward
    from w2s.train_stage import training_slice

    config, ctx = tiny_pipeline["config"], tiny_pipeline["ctx"]
    matched = matched_demos.run(ctx, MatchedDemosSlice.from_pipeline(config), data=tiny_pipeline["data"], weak=tiny_pipeline["dpo"])
    table = pq.read_table(matched.local_dir() / "weak_demos.parquet")
    student = pq.read_table(tiny_pipeline["data"].local_dir() / "student.parquet").to_pylist()
    k = config.sampling.k
    assert table.num_rows == len(student) * k
    rows = table.to_pylist()
    for i, prompt in enumerate(student):
        block = rows[i * k:(i + 1) * k]
        assert [r["sample_idx"] for r in block] == list(range(k))
        assert {(r["prompt_id"], r["prompt"], r["meta"]) for r in block} == {(prompt["prompt_id"], prompt["prompt"], prompt["meta"])}
    recomputed = SummaryFactsReward().score([r["prompt"] for r in rows], [r["response"] for r in rows], [r["meta"] for r in rows])
    assert recomputed.tolist() == pytest.approx(table.column("gold_reward").to_pylist())
    assert len(set(table.column("response").to_pylist())) > len(student)  # K draws, not K copies
    reseeded = config.model_copy(update={"run": config.run.model_copy(update={"seed": 5})})
    other = matched_demos.run(ctx, MatchedDemosSlice.from_pipeline(reseeded), data=tiny_pipeline["data"], weak=tiny_pipeline["dpo"])
    assert pq.read_table(other.local_dir() / "weak_demos.parquet").column("response").to_pylist() != table.column("response").to_pylist()
    from tasks.base_models import strong_base

    strong = strong_base.run(ctx, config.models.strong)
    sft = naive_sft.run(ctx, training_slice(config.baselines.naive_sft, config), demos=matched, strong=strong)
    trained = json.loads((sft.local_dir() / "manifest.json").read_text())
    assert trained["inputs"]["demos"] == matched.digest
    assert pq.read_table(sft.local_dir() / "train" / "d_weak.parquet").num_rows == table.num_rows
