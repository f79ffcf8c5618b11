"""Baselines refinement, dpo_weak_reward and strong_evaluator on tiny models: each stage's training
data against an independent computation, each artifact a loadable model folder, bad input named."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO, shard_artifact
from w2s.config.loading import load_config
from w2s.models.build import load_pretrained
from w2s.stage import Stage, StageOutput, execute

# configs/tiny.yaml trains each baseline 2 steps of batch 8. Its sections share one YAML anchor, so a
# whole section is replaced here: a dotted `--set` into one of them would reach every alias.
EVALUATOR = ("baselines.strong_evaluator={{learning_rate: 1.0e-3, warmup_steps: 0, batch_size: 8, micro_batch_size: 4, "
             "max_steps: 2, max_seq_len: 256, inverse_lambda: {}}}")
OVERRIDES = [EVALUATOR.format(0.5)]


def _model_artifact(ctx, stage: str, folder):
    """A model artifact (model/ HF folder) holding a cached tiny model, as strong_base/weak_sft write."""

    def body(writer, run):
        with writer.folder("model") as target:
            shutil.copytree(folder, target, dirs_exist_ok=True)
        return StageOutput({})

    from w2s.config import ScoringConfig

    return execute(ctx, Stage(stage, 99), ScoringConfig(), {}, body)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_smollm_model_dir, tiny_char_model_dir):
    from tasks.data import DataSlice, data as prepare_data
    from w2s.rewards import SummaryFactsReward

    root = tmp_path_factory.mktemp("baselines")
    config = load_config(REPO / "configs" / "tiny.yaml", [f"run.artifact_root={root}", *OVERRIDES])
    ctx = config.run_context()
    data = prepare_data.run(ctx, DataSlice(data=config.data))
    prompts = pq.read_table(data.local_dir() / "weak_demo.parquet")
    metas = prompts.column("meta").to_pylist()
    # hand-made weak answers: the ideal summary, a copied post fragment, and one empty answer that stopped
    responses = [json.loads(m)["ideal"] if i % 3 == 0 else prompts.column("prompt")[i].as_py()[40:90]
                 for i, m in enumerate(metas)]
    responses[1] = ""
    finish = ["length" if i == 2 else "stop" for i in range(len(responses))]
    d_weak = pa.table({
        "prompt_id": prompts.column("prompt_id"), "prompt": prompts.column("prompt"), "response": responses,
        "n_tokens": pa.array([len(r) for r in responses], pa.int32()), "finish_reason": finish,
        "gold_reward": SummaryFactsReward().score(prompts.column("prompt").to_pylist(), responses, metas),
        "meta": prompts.column("meta"),
    })

    def demos_body(writer, run):
        writer.write_parquet("weak_demos.parquet", d_weak)
        return StageOutput({})

    demos = execute(ctx, Stage("weak_demos", 99), config.data, {}, demos_body)
    strong = _model_artifact(ctx, "strong_base", tiny_smollm_model_dir)
    weak_ref = _model_artifact(ctx, "weak_sft", tiny_char_model_dir)
    return {"config": config, "ctx": ctx, "demos": demos, "d_weak": d_weak, "strong": strong, "weak_ref": weak_ref,
            "strong_dir": tiny_smollm_model_dir, "weak_ref_dir": tiny_char_model_dir}


def _check_model(ref, base_dir):
    """A loadable HF folder whose weights moved away from the base, with checkpoints in the manifest."""
    folder = ref.local_dir()
    model, tokenizer = load_pretrained(folder / "model")
    base, _ = load_pretrained(base_dir)
    trained, start = dict(model.named_parameters()), dict(base.named_parameters())
    assert set(trained) == set(start)
    assert any(not torch.equal(trained[n], start[n]) for n in trained)
    with torch.no_grad():
        assert torch.isfinite(model(**tokenizer("TL;DR: hello", return_tensors="pt")).logits).all()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["info"]["checkpoints"][-1]["path"] == "model"
    for checkpoint in manifest["info"]["checkpoints"][:-1]:
        assert (folder / checkpoint["path"] / "config.json").exists()
    return manifest


# -------------------------------------------------------------------------------------- refinement
def test_refinement_rewrites_every_weak_answer(setup):
    from tasks.refinement import REQUEST_PREFIX, RefinementSlice, refinement
    from w2s.generation import Engine, Request, derive_seed, refinement_prompt
    from w2s.rewards import SummaryFactsReward

    config, d_weak = setup["config"], setup["d_weak"]
    cfg = RefinementSlice.from_pipeline(config)
    ref = refinement.run(setup["ctx"], cfg, demos=setup["demos"], strong=setup["strong"])
    table = pq.read_table(ref.local_dir() / "refined.parquet").to_pylist()
    weak = d_weak.to_pylist()
    assert [r["prompt_id"] for r in table] == [w["prompt_id"] for w in weak]

    # the rewrites, regenerated independently: same prompt text, same per-prompt seed, same backend
    requests = [Request(w["prompt_id"], refinement_prompt(w["prompt"], w["response"]), 1,
                        derive_seed(config.run.seed, REQUEST_PREFIX + w["prompt_id"])) for w in weak]
    # a sample depends on its own seed only, not on the batch: three rows suffice
    with Engine(cfg.engine, str(setup["strong_dir"]), config.run.seed) as engine:
        again = {r.request_id: r for r in engine.generate(requests[:3], cfg.refinement).records}
    for row, w, request in zip(table, weak, requests):
        assert row["refinement_prompt"] == request.prompt
        assert "Weak Assistant:" in row["refinement_prompt"] and row["refinement_prompt"].endswith("Strong Assistant:")
        assert row["weak_response"] == w["response"] and row["prompt"] == w["prompt"]
        if w["prompt_id"] in again:
            assert (row["rewrite"], row["n_tokens"]) == (again[w["prompt_id"]].completion, again[w["prompt_id"]].n_tokens)
        if row["rewrite"].strip():
            assert (row["source"], row["completion"]) == ("rewrite", " " + row["rewrite"].strip())
            assert row["finish_reason"] in ("stop", "length") and (w["prompt_id"] not in again or
                                                                  row["finish_reason"] == again[w["prompt_id"]].finish_reason)
        else:
            assert (row["source"], row["completion"], row["finish_reason"]) == ("fallback_empty", w["response"], w["finish_reason"])
    gold = SummaryFactsReward().score([r["prompt"] for r in table], [r["completion"] for r in table], [r["meta"] for r in table])
    np.testing.assert_allclose([r["gold_reward"] for r in table], gold)
    manifest = _check_model(ref, setup["strong_dir"])
    assert manifest["info"]["objective"] == "sft"
    assert manifest["metrics"]["rewrites"] + manifest["metrics"]["fallback_empty"] == len(weak)
    assert manifest["metrics"]["gold_reward_refined"] == pytest.approx(float(np.mean(gold)))
    assert manifest["inputs"] == {"demos": setup["demos"].digest, "strong": setup["strong"].digest}


def test_refinement_fallback_policy():
    from w2s.baseline_data import refined_completion

    assert refined_completion("  A short summary.\n", " weak") == (" A short summary.", "rewrite")
    assert refined_completion(" \n ", " weak") == (" weak", "fallback_empty")
    assert refined_completion(None, " weak") == (" weak", "fallback_skipped")


# -------------------------------------------------------------------------------- DPO, weak reward
def _scores_tables(rng):
    """Scoring-shaped shards: 10 ordinary prompts with K = 3 plus one each of tie / equal text /
    too few non-empty samples, split over two shards."""
    rows = []
    for p in range(10):
        for k in range(3):
            rows.append({"prompt_id": f"p{p}", "sample_idx": k, "prompt": f"post {p}\nTL;DR:",
                         "completion": "" if (p == 3 and k == 1) else f" summary {p}.{k}",
                         "finish_reason": "length" if (p == 5 and k == 0) else "stop",
                         "logp_weak": float(rng.normal(-20, 5)), "logp_weak_ref": float(rng.normal(-20, 5))})
    rows += [{"prompt_id": "tie", "sample_idx": k, "prompt": "tie\nTL;DR:", "completion": f" t{k}", "finish_reason": "stop",
              "logp_weak": -3.0, "logp_weak_ref": -1.0} for k in range(3)]
    rows += [{"prompt_id": "same", "sample_idx": k, "prompt": "same\nTL;DR:", "completion": " same", "finish_reason": "stop",
              "logp_weak": -float(k), "logp_weak_ref": 0.0} for k in range(3)]
    rows += [{"prompt_id": "few", "sample_idx": k, "prompt": "few\nTL;DR:", "completion": "" if k else " only",
              "finish_reason": "stop", "logp_weak": -float(k), "logp_weak_ref": 0.0} for k in range(3)]
    extra = {"fewshot_prompt": "x", "n_tokens": 3, "seed": 1, "n_tokens_weak": 3, "truncated": False}
    rows = [{**r, **extra} for r in rows]
    order = rng.permutation(len(rows))  # rows of a prompt in any order within the shards
    first = [rows[i] for i in order if rows[i]["prompt_id"] in {f"p{p}" for p in range(5)} | {"tie"}]
    second = [rows[i] for i in order if rows[i] not in first]
    return [pa.Table.from_pylist(first), pa.Table.from_pylist(second)], rows


def test_dpo_pairs_are_every_within_prompt_pair_the_weak_log_ratio_orders(setup):
    from itertools import combinations

    from tasks.dpo_weak_reward import dpo_weak_reward
    from w2s.train_stage import training_slice

    config, ctx = setup["config"], setup["ctx"]
    tables, rows = _scores_tables(np.random.default_rng(0))
    scores = shard_artifact(ctx, "scoring", tables)
    ref = dpo_weak_reward.run(ctx, training_slice(config.baselines.dpo_weak_reward, config), scores=scores, strong=setup["strong"])
    got = pq.read_table(ref.local_dir() / "train" / "pairs.parquet").to_pylist()

    expected = {}
    for p in [f"p{i}" for i in range(10)]:
        mine = [r for r in rows if r["prompt_id"] == p and r["completion"]]
        for a, b in combinations(mine, 2):
            ra, rb = a["logp_weak"] - a["logp_weak_ref"], b["logp_weak"] - b["logp_weak_ref"]
            best, worst = (a, b) if ra > rb else (b, a)
            expected[(p, best["sample_idx"], worst["sample_idx"])] = (best, worst, max(ra, rb), min(ra, rb))
    assert len(expected) == 9 * 3 + 1  # K = 3 gives 3 pairs a prompt; p3 has one empty sample
    assert {(r["prompt_id"], r["chosen_sample_idx"], r["rejected_sample_idx"]) for r in got} == set(expected)
    for r in got:  # tie, same and few are skipped
        best, worst, hi, lo = expected[(r["prompt_id"], r["chosen_sample_idx"], r["rejected_sample_idx"])]
        assert (r["chosen"], r["rejected"], r["prompt"]) == (best["completion"], worst["completion"], best["prompt"])
        assert r["chosen_log_ratio"] == pytest.approx(hi) and r["rejected_log_ratio"] == pytest.approx(lo)
    manifest = _check_model(ref, setup["strong_dir"])
    metrics = manifest["metrics"]
    # pairs skipped: the tie prompt's 3 pairs (equal ratios), the same-text prompt's 3; one prompt has too few
    assert (metrics["pairs"], metrics["skipped_tie"], metrics["skipped_equal_text"], metrics["skipped_too_few"]) == (28, 3, 3, 1)
    assert manifest["info"]["objective"] == "dpo" and manifest["config"]["train"]["beta"] == 0.05
    assert manifest["config"]["train"]["epochs"] == 1.0
    assert (ref.local_dir() / "ref_logps.parquet").exists()


def test_dpo_bad_scores_fail_before_training(setup):
    from tasks.dpo_weak_reward import dpo_weak_reward
    from w2s.train_stage import training_slice

    config, ctx = setup["config"], setup["ctx"]
    cfg = training_slice(config.baselines.dpo_weak_reward, config)
    tables, _ = _scores_tables(np.random.default_rng(1))
    broken = tables[1].set_column(tables[1].column_names.index("logp_weak"), "logp_weak",
                                  pa.array([math.nan] + tables[1].column("logp_weak").to_pylist()[1:]))
    nan_scores = shard_artifact(ctx, "scoring_nan", [tables[0], broken])
    with pytest.raises(ValueError, match=rf"part-00001.parquet: row 0 \(prompt_id {broken.column('prompt_id')[0]}\): logp_weak is nan"):
        dpo_weak_reward.run(ctx, cfg, scores=nan_scores, strong=setup["strong"])
    missing = shard_artifact(ctx, "scoring_cols", [tables[0].drop_columns(["logp_weak_ref"])])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['logp_weak_ref'\]"):
        dpo_weak_reward.run(ctx, cfg, scores=missing, strong=setup["strong"])
    few = shard_artifact(ctx, "scoring_few", [tables[0].slice(0, 6)])
    with pytest.raises(ValueError, match="fewer than baselines.dpo_weak_reward.batch_size 8"):
        dpo_weak_reward.run(ctx, cfg, scores=few, strong=setup["strong"])


# ------------------------------------------------------------------------------ strong evaluator
def _logp(model, tokenizer, prompt: str, completion: str, ended: bool) -> float:
    """log π(y|x) from one plain forward pass: completion tokens = the joint tokenisation's tokens
    after its common prefix with the prompt's, plus EOS when the answer stopped."""
    p_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion)["input_ids"] + ([tokenizer.eos_token_id] if ended else [])
    n = next((i for i, (a, b) in enumerate(zip(p_ids, ids)) if a != b), min(len(p_ids), len(ids)))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(n, len(ids))))


def test_strong_evaluator_weights_match_independent_softmax(setup):
    from tasks.strong_evaluator import StrongEvaluatorSlice, strong_evaluator

    config, d_weak = setup["config"], setup["d_weak"]
    cfg = StrongEvaluatorSlice.from_pipeline(config)
    assert cfg.train.inverse_lambda == 0.5
    ref = strong_evaluator.run(setup["ctx"], cfg, demos=setup["demos"], strong=setup["strong"], weak_ref=setup["weak_ref"])
    table = pq.read_table(ref.local_dir() / "weights.parquet").to_pylist()
    weak = d_weak.to_pylist()
    assert [r["prompt_id"] for r in table] == [w["prompt_id"] for w in weak]
    assert [r["completion"] for r in table] == [w["response"] for w in weak]

    strong, weak_ref = (np.array([_logp(*loaded, w["prompt"], w["response"], w["finish_reason"] == "stop") for w in weak])
                        for loaded in (load_pretrained(setup["strong_dir"]), load_pretrained(setup["weak_ref_dir"])))
    np.testing.assert_allclose([r["logp_strong_ref"] for r in table], strong, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose([r["logp_weak_ref"] for r in table], weak_ref, rtol=1e-4, atol=1e-3)
    r = strong - weak_ref
    expected = len(r) * np.exp(0.5 * r) / np.exp(0.5 * r).sum()  # |r/λ| is small here: no shift needed
    got = np.array([row["weight"] for row in table])
    np.testing.assert_allclose(got, expected, rtol=1e-3)
    assert got.mean() == pytest.approx(1.0)
    assert np.ptp(got) > 1e-3  # not the per-prompt normalisation's all-ones
    manifest = _check_model(ref, setup["strong_dir"])
    assert manifest["info"]["objective"] == "weighted_mle"
    assert manifest["metrics"]["ess"] == pytest.approx(expected.sum() ** 2 / (expected**2).sum(), rel=1e-3)
    assert manifest["config"]["train"]["inverse_lambda"] == 0.5


def test_strong_evaluator_weights_are_stable_and_keyed_by_lambda(setup):
    from tasks.strong_evaluator import StrongEvaluatorSlice
    from tasks.strong_evaluator import strong_evaluator as STAGE
    from w2s.baseline_data import evaluator_weights

    w = evaluator_weights(np.array([5000.0, 4990.0, -3000.0]), 1.0)
    np.testing.assert_allclose(w, [3 / (1 + math.exp(-10)), 3 * math.exp(-10) / (1 + math.exp(-10)), 0.0], atol=1e-12)
    config = setup["config"]
    other = load_config(REPO / "configs" / "tiny.yaml", [f"run.artifact_root={config.run.artifact_root}", EVALUATOR.format(2.0)])
    inputs = {"demos": setup["demos"], "strong": setup["strong"], "weak_ref": setup["weak_ref"]}
    assert STAGE.key(StrongEvaluatorSlice.from_pipeline(config), inputs) != STAGE.key(StrongEvaluatorSlice.from_pipeline(other), inputs)


def test_bad_weak_demos_named_before_compute(setup):
    from tasks.refinement import RefinementSlice, refinement
    from tasks.strong_evaluator import StrongEvaluatorSlice, strong_evaluator

    ctx, config = setup["ctx"], setup["config"]

    def bad_body(writer, run):
        writer.write_parquet("weak_demos.parquet", setup["d_weak"].drop_columns(["response"]))
        return StageOutput({})

    bad = execute(ctx, Stage("weak_demos_bad", 99), config.data, {}, bad_body)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['response'\]"):
        refinement.run(ctx, RefinementSlice.from_pipeline(config), demos=bad, strong=setup["strong"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['response'\]"):
        strong_evaluator.run(ctx, StrongEvaluatorSlice.from_pipeline(config), demos=bad, strong=setup["strong"],
                         weak_ref=setup["weak_ref"])


def test_auto_inverse_lambda_hits_the_target_ess_on_heavy_tailed_scores():
    from w2s.baseline_data import evaluator_weights, inverse_lambda_for_ess

    rng = np.random.default_rng(11)
    for scale, n, target in ((220.0, 64, 0.5), (3.0, 500, 0.2), (1e4, 10, 0.9)):
        r = rng.standard_t(2, size=n) * scale  # sequence sums: a heavy tail, as across answers of unequal length
        beta = inverse_lambda_for_ess(r, target)
        w = evaluator_weights(r, beta)
        p = np.exp(beta * (r - r.max()))
        p /= p.sum()
        assert 1.0 / (n * (p**2).sum()) == pytest.approx(target, rel=1e-6)  # ESS/N by the textbook formula
        assert w.mean() == pytest.approx(1.0)
    # ESS falls with 1/λ: a larger 1/λ can only concentrate the weights
    fracs = [1.0 / (64 * ((evaluator_weights(r, b) / 64) ** 2).sum()) for b in (1e-4, 1e-3, 1e-2, 1e-1)]
    assert fracs == sorted(fracs, reverse=True)
    assert inverse_lambda_for_ess(np.full(8, -3.0), 0.5) == 0.0  # nothing to reweight: uniform


def test_auto_inverse_lambda_is_the_default_and_a_number_fixes_it():
    from w2s.config import PipelineConfig

    assert PipelineConfig().baselines.strong_evaluator.inverse_lambda == "auto"
    assert load_config(REPO / "pipeline_config.yaml", []).baselines.strong_evaluator.inverse_lambda == "auto"
    with pytest.raises(Exception, match="inverse_lambda"):
        load_config(REPO / "pipeline_config.yaml", ["baselines.strong_evaluator.inverse_lambda=.inf"])


def test_strong_evaluator_auto_lambda_reports_the_target_ess(setup):
    from tasks.strong_evaluator import StrongEvaluatorSlice, strong_evaluator

    config = load_config(REPO / "configs" / "tiny.yaml", [f"run.artifact_root={setup['config'].run.artifact_root}",
                                                          EVALUATOR.format('"auto"')])
    cfg = StrongEvaluatorSlice.from_pipeline(config)
    ref = strong_evaluator.run(setup["ctx"], cfg, demos=setup["demos"], strong=setup["strong"], weak_ref=setup["weak_ref"])
    table = pq.read_table(ref.local_dir() / "weights.parquet")
    r, w = (np.asarray(table.column(c).to_pylist()) for c in ("r_strong", "weight"))
    metrics = json.loads((ref.local_dir() / "manifest.json").read_text())["metrics"]
    beta = metrics["inverse_lambda"]
    p = np.exp(beta * (r - r.max()))
    np.testing.assert_allclose(w, len(r) * p / p.sum(), rtol=1e-9)  # the weights are exp(r/λ) at the reported 1/λ
    assert metrics["ess_frac"] == pytest.approx(cfg.train.target_ess_frac, rel=1e-6)
