"""F-weights (eq. 8) against an independent numpy computation, limits, bad input, the stage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import shard_artifact
from w2s.config import WeightsConfig
from w2s.weights import ShardWeighter, WeightsInputError


def _reference_weights(logp_weak, logp_ref, groups, beta_over_lambda):
    """Straight from eq. 8 with Python floats and math.fsum-free logsumexp per group."""
    out = np.empty(len(groups))
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        f = np.array([beta_over_lambda * (logp_weak[i] - logp_ref[i]) for i in idx], dtype=np.float64)
        z = f.max() + np.log(np.sum(np.exp(f - f.max())))
        out[idx] = len(idx) * np.exp(f - z)
    return out


def _table(groups, weak, ref):
    return pa.table({"prompt_id": groups, "sample_idx": list(range(len(groups))), "logp_weak": weak, "logp_weak_ref": ref})


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
def test_weights_match_independent_computation(scale):
    rng = np.random.default_rng(0)
    groups = [f"p{i % 37}" for i in rng.permutation(37 * 4)]  # interleaved, not sorted
    weak = rng.normal(0, scale, len(groups))
    ref = rng.normal(0, scale, len(groups))
    table, diagnostics = ShardWeighter(1.0).process(_table(groups, weak, ref), "s0")
    got = table.column("weight").to_numpy()
    expected = _reference_weights(weak, ref, groups, 1.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table.column("log_ratio").to_numpy(), weak - ref)
    for g in set(groups):  # every prompt's weights average 1
        mask = np.array(groups) == g
        assert got[mask].mean() == pytest.approx(1.0)
    rows = diagnostics.to_pylist()
    for row in rows:
        w = expected[np.array(groups) == row["prompt_id"]]
        assert row["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum()) and row["max_weight"] == pytest.approx(w.max())


def test_extreme_scores_stay_finite_and_one_hot():
    table = _table(["a"] * 4, [1e4, -1e4, 0.0, 9e3], [0.0, 0.0, 0.0, 0.0])
    weights = ShardWeighter(1.0).process(table, "s")[0].column("weight").to_numpy()
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights, [4.0, 0.0, 0.0, 0.0], atol=1e-12)


def test_limits_of_beta_over_lambda_follow_eq_8():
    """Eq. 8: β/λ → 0 flattens weights to 1 (uniform); β/λ → ∞ concentrates them (one-hot).
    (The paper's prose states these limits reversed; see w2s/weights.py.)"""
    rng = np.random.default_rng(1)
    groups = [f"p{i // 4}" for i in range(40)]
    weak, ref = rng.normal(size=40), rng.normal(size=40)
    tiny = ShardWeighter(1e-9).process(_table(groups, weak, ref), "s")[0].column("weight").to_numpy()
    np.testing.assert_allclose(tiny, np.ones(40), atol=1e-6)
    for bl in (1e6, float("inf")):
        huge = ShardWeighter(bl).process(_table(groups, weak, ref), "s")[0].column("weight").to_numpy()
        delta = (weak - ref).reshape(10, 4)
        expected = np.zeros((10, 4))
        expected[np.arange(10), delta.argmax(1)] = 4.0
        np.testing.assert_allclose(huge.reshape(10, 4), expected, atol=1e-6)


def test_infinite_beta_over_lambda_splits_ties():
    weights = ShardWeighter(float("inf")).process(_table(["a"] * 4, [1.0, 1.0, 0.0, 0.5], [0.0] * 4), "s")[0]
    np.testing.assert_allclose(weights.column("weight").to_numpy(), [2.0, 2.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "groups,weak,ref,match",
    [
        (["a", "a", "b", "b"], [0.0, np.nan, 0.0, 0.0], [0.0] * 4, "prompt_id 'a' row 1 has a non-finite"),
        (["a", "a", "b", "b"], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -np.inf, 0.0], "prompt_id 'b' row 2"),
        (["a", "a", "b"], [0.0] * 3, [0.0] * 3, "prompt_id 'b' has fewer than 2 samples"),
    ],
)
def test_bad_scores_are_named(groups, weak, ref, match):
    with pytest.raises(WeightsInputError, match=match):
        ShardWeighter(1.0).process(_table(groups, weak, ref), "scores/shards/part-0.parquet")


def test_prompt_split_across_shards_is_an_error():
    weighter = ShardWeighter(1.0)
    weighter.process(_table(["a", "a", "b", "b"], [0.0] * 4, [0.0] * 4), "part-0")
    with pytest.raises(WeightsInputError, match="part-1: rows of prompt_id 'b' are split across shards \\(also in part-0\\)"):
        weighter.process(_table(["c", "c", "b", "b"], [0.0] * 4, [0.0] * 4), "part-1")


def test_nonpositive_beta_over_lambda_rejected():
    with pytest.raises(WeightsInputError):
        ShardWeighter(0.0)
    with pytest.raises(ValueError):
        WeightsConfig(beta_over_lambda=-1)


def test_weights_stage_writes_shards_diagnostics_plot_and_reruns_only_on_its_own_config(ctx):
    from tasks.weights import weights

    rng = np.random.default_rng(2)
    shards = [_table([f"s{s}p{i // 4}" for i in range(20)], rng.normal(size=20), rng.normal(size=20)) for s in range(3)]
    scores = shard_artifact(ctx, "scoring", shards)
    first = weights.run(ctx, WeightsConfig(beta_over_lambda=1.0), scores)
    folder = first.local_dir()
    out = [pq.read_table(folder / f"shards/part-{i:05d}.parquet") for i in range(3)]
    for table, source in zip(out, shards):
        expected = _reference_weights(source.column("logp_weak").to_numpy(), source.column("logp_weak_ref").to_numpy(),
                                      source.column("prompt_id").to_pylist(), 1.0)
        np.testing.assert_allclose(table.column("weight").to_numpy(), expected, rtol=1e-9)
        assert table.column_names[:4] == source.column_names  # later stages add columns, never rename
    assert (folder / "weights_histogram.png").stat().st_size > 1000
    assert pq.read_table(folder / "diagnostics").num_rows == 15
    assert weights.run(ctx, WeightsConfig(beta_over_lambda=1.0), scores) == first
    assert weights.run(ctx, WeightsConfig(beta_over_lambda=0.5), scores).key != first.key
