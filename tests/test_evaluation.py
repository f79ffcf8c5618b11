"""PGR, win-rate, the k3 KL estimator, CIs and the report, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from w2s.evaluation import k3_kl, k3_terms, mean_ci95, performance, pgr, win_rate
from tests.conftest import REPO
from w2s.report import Label, bar_policies, build_report, headline, matched_kl_rows, plot_report, render_html, render_markdown


def test_pgr_by_hand():
    assert pgr(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert pgr(0.9, 0.2, 0.8) == pytest.approx(0.7 / 0.6)  # beyond the ceiling: > 1
    assert pgr(0.1, 0.2, 0.8) == pytest.approx(-0.1 / 0.6)
    assert math.isnan(pgr(0.3, 0.5, 0.5))


def test_win_rate_counts_ties_as_half():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 200).astype(float), rng.integers(0, 3, 200).astype(float)
    expected = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)
    assert win_rate(a, b) == pytest.approx(expected)
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_k3_terms_match_the_ratio_formula_and_are_nonnegative():
    lp, lr = np.array([-3.0, -10.0, -0.5, -7.0]), np.array([-2.5, -12.0, -0.5, -1.0])
    ratio = np.exp(lr) / np.exp(lp)
    np.testing.assert_allclose(k3_terms(lp, lr), (ratio - 1) - np.log(ratio), rtol=1e-12)
    assert np.all(k3_terms(lp, lr) >= 0) and k3_terms([-1.0], [-1.0])[0] == 0
    with pytest.raises(ValueError):
        k3_kl([float("nan")], [0.0])


def test_k3_is_unbiased_for_kl_on_a_discrete_distribution():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(p * np.log(p / q)))
    draws = np.random.default_rng(1).choice(4, size=200_000, p=p)
    assert k3_kl(np.log(p[draws]), np.log(q[draws])) == pytest.approx(exact, rel=0.02)


def test_mean_ci95_matches_scipy_t_interval():
    values = [0.31, 0.42, 0.18, 0.55, 0.27]
    interval = mean_ci95(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values))
    assert interval.half_width == pytest.approx((high - low) / 2, rel=1e-3)
    assert math.isnan(mean_ci95([0.4]).half_width) and str(mean_ci95([0.4])) == "0.400"
    assert performance([1.0, 2.0]) == 1.5


def _samples(rewards: dict[str, float], checkpoints: dict[float, dict[str, float]] | None = None, k3: float | None = None):
    rows = []
    for fraction, values in ({1.0: rewards} | (checkpoints or {})).items():
        name = "final" if fraction == 1.0 else f"step-{int(fraction * 10)}"
        rows += [{"checkpoint": name, "fraction": fraction, "prompt_id": pid, "gold_reward": r} for pid, r in values.items()]
    table = pa.Table.from_pylist(rows)
    return table.append_column("k3", pa.array([k3] * table.num_rows)) if k3 is not None else table


def test_report_pgr_win_rate_and_seeds_against_hand_computation(tmp_path):
    ids = ["a", "b", "c", "d"]
    evaluations = {}
    for seed, shift in ((0, 0.0), (1, 0.2)):
        evaluations[f"weak/seed:{seed}"] = _samples(dict(zip(ids, [0.0, 0.0, 1.0, 1.0])))
        evaluations[f"strong_ceiling/seed:{seed}"] = _samples(dict(zip(ids, [2.0, 2.0, 2.0, 2.0])))
        evaluations[f"reference/seed:{seed}"] = _samples(dict(zip(ids, [1.0, 1.0, 1.0, 1.0])))
        evaluations[f"eve/seed:{seed}"] = _samples(dict(zip(ids, [1.0 + shift, 1.0, 2.0, 0.0])),
                                                   {0.5: dict(zip(ids, [0.5, 0.5, 0.5, 0.5]))}, k3=0.3)
        evaluations[f"eve/seed:{seed}/beta_over_lambda:inf"] = _samples(dict(zip(ids, [0.5] * 4)))
    evaluations["naive_sft/seed:0"] = _samples(dict(zip(ids, [1.0, 1.0, 1.0, 1.0])))  # P = 1.0 → PGR 1/3
    evaluations["naive_sft/seed:1"] = _samples(dict(zip(ids, [2.0, 1.0, 1.0, 1.0])))  # P = 1.25 → PGR 0.5
    report = build_report(evaluations)
    eve = report.policies["eve"]
    # P_weak = 0.5, P_strong = 2.0; seed 0: P = 1.0 → PGR 1/3; seed 1: P = 1.05 → 0.55/1.5
    np.testing.assert_allclose(eve.pgr, [0.5 / 1.5, 0.55 / 1.5])
    # vs reference (all 1.0): seed 0 answers 1, 1, 2, 0 → ½ + ½ + 1 + 0 = 2/4; seed 1: 1.2 wins → 2.5/4
    np.testing.assert_allclose(eve.win, [0.5, 0.625])
    np.testing.assert_allclose(eve.curve[0.5], [0.0, 0.0])
    assert eve.kl == [0.3, 0.3] and len(eve.kl_win) == 4
    assert report.sweeps["beta_over_lambda"]["eve"][math.inf] == [0.0, 0.0]
    assert "eve" in report.policies and not report.warnings
    images = plot_report(report, tmp_path)
    assert {p.name for p in images} >= {"pgr_bars.png", "pgr_over_training.png", "pgr_vs_beta_over_lambda.png", "winrate_vs_kl.png"}
    markdown = render_markdown(report, images, "t")
    row = next(line for line in markdown.splitlines() if line.startswith("| eve |"))
    expected = mean_ci95([0.5 / 1.5, 0.55 / 1.5])
    assert str(expected) in row
    # paired by seed: EVE − naive SFT = 1/3 − 1/3 = 0 on seed 0, 0.55/1.5 − 0.5 on seed 1 (naive SFT ahead)
    paired = {r["baseline"]: r for r in report.paired_rows()}
    assert set(paired) == {"naive_sft", "reference"}
    differences = [0.0, 0.55 / 1.5 - 0.5]
    assert paired["naive_sft"]["PGR(eve) − PGR(baseline)"] == str(mean_ci95(differences))
    assert paired["naive_sft"]["seeds eve is ahead"] == "0/2"
    # π_ref: P = 1.0 on both seeds → PGR 1/3; EVE is ahead only on seed 1
    assert paired["reference"]["seeds eve is ahead"] == "1/2"
    assert report.per_seed()["naive_sft"] == {0: {"P": 1.0, "PGR": pytest.approx(0.5 / 1.5), "win-rate": 0.5},
                                              1: {"P": 1.25, "PGR": pytest.approx(0.5), "win-rate": pytest.approx(0.625)}}
    assert f"| naive_sft | {mean_ci95(differences)} | 0/2 |" in markdown
    page = render_html(markdown, images)
    assert page.count("data:image/png;base64,") == len(images) and "<td>eve</td>" in page
    # python-markdown rendered it: real tables (policies, paired, β/λ sweep) with header rows, bold as <strong>, no Markdown left over
    assert page.count("<table>") == 3 and "<th>policy</th>" in page and "**" not in page and "<strong>" in page
    assert bar_policies(report) == ["weak", "reference", "strong_ceiling", "eve", "naive_sft"]
    # the headline is EVE against naive SFT, with the paired difference
    top = headline(report)
    assert markdown.splitlines()[2] == top and str(mean_ci95([0.5 / 1.5, 0.55 / 1.5])) in top and str(mean_ci95(differences)) in top


def test_a_k_sweep_reports_each_policy_it_ran(tmp_path):
    """Fig. 6 scales EVE and naive SFT: a K sweep holds a PGR column per policy, a point a policy did
    not run is shown as missing, never borrowed from another policy."""
    ids = ["a", "b"]
    evaluations = {"weak/seed:0": _samples(dict(zip(ids, [0.0, 1.0]))), "strong_ceiling/seed:0": _samples(dict(zip(ids, [2.0, 2.0]))),
                   "reference/seed:0": _samples(dict(zip(ids, [1.0, 1.0]))), "eve/seed:0": _samples(dict(zip(ids, [1.0, 1.0])))}
    evaluations["eve/seed:0/k:2"] = _samples(dict(zip(ids, [1.0, 1.0])))  # P 1.0, P_weak 0.5, P_strong 2 → PGR 1/3
    evaluations["eve/seed:0/k:8"] = _samples(dict(zip(ids, [2.0, 1.0])))  # P 1.5 → 2/3
    evaluations["naive_sft/seed:0/k:8"] = _samples(dict(zip(ids, [0.0, 1.0])))  # P 0.5 → 0
    report = build_report(evaluations)
    np.testing.assert_allclose(report.sweeps["k"]["eve"][2.0], [1 / 3])
    np.testing.assert_allclose(report.sweeps["k"]["eve"][8.0], [2 / 3])
    assert report.sweeps["k"]["naive_sft"] == {8.0: [0.0]} and set(report.sweeps) == {"k"}
    images = plot_report(report, tmp_path)
    markdown = render_markdown(report, images, "t")
    assert "| K | PGR(eve) | PGR(naive_sft) |" in markdown
    assert f"| 2 | {mean_ci95([1 / 3])} | – |" in markdown and f"| 8 | {mean_ci95([2 / 3])} | {mean_ci95([0.0])} |" in markdown
    assert "pgr_vs_k.png" in {p.name for p in images}


def test_a_kl_at_the_final_model_only_gives_one_reward_kl_point_per_seed():
    """kl_checkpoints: final leaves k3 null at the intermediate checkpoints: the KL column and the
    reward-KL points come from the final rows, the PGR curve from every checkpoint."""
    ids = ["a", "b"]
    evaluations = {"weak/seed:0": _samples(dict(zip(ids, [0.0, 0.0]))), "strong_ceiling/seed:0": _samples(dict(zip(ids, [2.0, 2.0]))),
                   "reference/seed:0": _samples(dict(zip(ids, [1.0, 1.0])))}
    intermediate = _samples({}, {0.5: dict(zip(ids, [0.5, 0.5]))})
    final = _samples(dict(zip(ids, [2.0, 1.0])), k3=0.7)
    evaluations["eve/seed:0"] = pa.concat_tables([final, intermediate], promote_options="default")  # as evaluate writes it
    eve = build_report(evaluations).policies["eve"]
    assert eve.kl == [0.7] and eve.kl_win == [(1.0, 0.7, 0.75)]
    np.testing.assert_allclose(eve.curve[0.5], [0.25])
    np.testing.assert_allclose(eve.curve[1.0], [0.75])


def test_the_html_report_escapes_raw_html_in_the_markdown():
    page = render_html("# t\n\n<script>alert(1)</script> a & b\n", [])
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_warns_when_the_ceiling_is_below_the_weak_teacher():
    report = build_report({"weak": _samples({"a": 1.0}), "strong_ceiling": _samples({"a": 0.0}), "eve": _samples({"a": 0.5})})
    assert report.warnings and "does not beat" in report.warnings[0]


def test_labels_round_trip_and_reject_unknown_fields():
    assert Label.parse("eve/seed:2/beta_over_lambda:0.5") == Label("eve", 2, 0.5)
    assert str(Label.parse("eve/seed:1/k:8")) == "eve/seed:1/k:8"
    with pytest.raises(ValueError):
        Label.parse("eve/lr:3")


def test_sweep_labels_are_valid_mlflow_param_keys():
    """The report stage logs `input.evaluations.<label>` as MLflow params (a comma or '=' is rejected)."""
    from mlflow.utils.validation import _validate_param_name

    from flows.sweep import sweep_points
    from w2s.config.loading import load_config
    from tests.conftest import REPO

    config = load_config(REPO / "configs" / "tiny.yaml", ["sweep.seeds=[0, 3]", "sweep.k=[2, 4]"])
    labels = [f"eve/{suffix}" for suffix, *_ in sweep_points(config)] + ["naive_sft/seed:3"]
    assert len(labels) == 9
    for label in labels:
        _validate_param_name(f"input.evaluations.{label}")
        assert str(Label.parse(label)) == label


def test_a_matched_k_sweep_trains_naive_sft_at_each_k_and_reports_both():
    """Traced, nothing computed: with naive_sft_data=matched each K point trains its own naive SFT on
    its own matched_demos (K answers per prompt), and the report gets `naive_sft/seed:s/k:K` beside
    EVE's; with D_weak (§5) naive SFT does not depend on K and is not swept."""
    from flows.sweep import sweep
    from tests.conftest import REPO
    from w2s.artifacts import ArtifactRef
    from w2s.config.loading import load_config
    from w2s.orchestration import trace_flow

    def traced(*overrides):
        calls = []

        def record(declared, ctx, config, inputs):
            calls.append((declared.name, config, inputs))
            return ArtifactRef(stage=declared.name, key=f"k{len(calls)}", uri=f"traced://{len(calls)}", digest="0" * 64)

        trace_flow(sweep, load_config(REPO / "configs" / "tiny.yaml", ["sweep.k=[2, 8]", "sweep.beta_over_lambda=[1.0]", *overrides]), record)
        return calls

    calls = traced("baselines.naive_sft_data=matched")
    report_labels = set(next(inputs for name, _, inputs in calls if name == "report")["evaluations"])
    assert {"naive_sft/seed:0/k:2", "naive_sft/seed:0/k:8", "eve/seed:0/k:8", "naive_sft/seed:0"} <= report_labels
    base_k = load_config(REPO / "configs" / "tiny.yaml", []).sampling.k
    # the base run and each K point make matched_demos at their own K (a β point asks for the base run's again:
    # the same config, so the same key, a cache hit), and each naive SFT trains on the one of its own K
    made = {f"k{i + 1}": config.sampling.k for i, (name, config, _) in enumerate(calls) if name == "matched_demos"}
    assert set(made.values()) == {base_k, 2, 8}
    trained = [(config.sampling.k, made[inputs["demos"].key]) for name, config, inputs in calls if name == "naive_sft"]
    assert {k for k, _ in trained} == {base_k, 2, 8} and all(k == demos_k for k, demos_k in trained)
    on_d_weak = set(next(inputs for name, _, inputs in traced("baselines.naive_sft_data=d_weak") if name == "report")["evaluations"])
    assert "naive_sft/seed:0/k:8" not in on_d_weak and "eve/seed:0/k:8" in on_d_weak


def test_eve_and_dpo_are_compared_at_eves_kl_on_dpos_checkpoint_curve(tmp_path):
    """§11.2 compares EVE with DPO at equal KL: DPO's gold reward at EVE's final KL, interpolated
    linearly between DPO's checkpoints; outside DPO's KL range there is no comparison."""
    ids = ["a", "b"]
    evaluations = {}
    for seed, eve_kl in ((0, 2.0), (1, 5.0)):
        evaluations |= {f"weak/seed:{seed}": _samples(dict(zip(ids, [0.0, 0.0]))),
                        f"strong_ceiling/seed:{seed}": _samples(dict(zip(ids, [2.0, 2.0]))),
                        f"reference/seed:{seed}": _samples(dict(zip(ids, [1.0, 1.0])))}
        evaluations[f"eve/seed:{seed}"] = _samples(dict(zip(ids, [2.0, 1.0])), k3=eve_kl)  # P 1.5
        evaluations[f"dpo_weak_reward/seed:{seed}"] = pa.concat_tables([
            _samples(dict(zip(ids, [0.5, 0.5])), k3=3.0),  # final: KL 3, P 0.5
            _samples({}, {0.5: dict(zip(ids, [1.0, 1.0]))}, k3=1.0)])  # half-way: KL 1, P 1.0
    report = build_report(evaluations)
    rows = {r["seed"]: r for r in matched_kl_rows(report)}
    # seed 0: at KL 2, half-way between (1, 1.0) and (3, 0.5): P 0.75, EVE ahead by 0.75
    assert (rows["0"]["P(dpo_weak_reward) at that KL"], rows["0"]["difference"]) == ("0.750", "+0.750")
    assert rows["1"]["difference"] == "–" and rows["1"]["KL range of dpo_weak_reward"] == "1.00–3.00"
    images = plot_report(report, tmp_path)
    assert "gold_vs_kl_eve_dpo.png" in {p.name for p in images}
    assert "at equal KL" in render_markdown(report, images, "t")


def test_the_report_names_its_code_and_each_evaluation_artifact_with_its_seed(ctx):
    import subprocess

    from pydantic import BaseModel

    from tasks.report import provenance_lines
    from w2s.artifacts import store_for
    from w2s.stage import Stage, StageOutput, execute

    class Seeded(BaseModel):
        seed: int

    def body(writer, run):
        writer.write_json("samples.json", {"seed": run.run_id})
        return StageOutput({})

    refs = {label: execute(ctx, Stage(f"evaluate_{label}", 1), Seeded(seed=seed), {}, body) for label, seed in (("weak", 4), ("eve", 3))}
    lines = provenance_lines(store_for(ctx.artifact_root), refs)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert lines[2].startswith("Computed by w2s ") and f"commit {commit}" in lines[2]
    assert lines[-2:] == [f"| eve | `evaluate_eve/{refs['eve'].key}` | `{refs['eve'].digest[:16]}` | 3 |",
                          f"| weak | `evaluate_weak/{refs['weak'].key}` | `{refs['weak'].digest[:16]}` | 4 |"]
