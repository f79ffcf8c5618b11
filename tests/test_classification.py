"""The w2s_classification flow: metrics against independent computations, the aux-loss gradient,
the feature/truncation identity, the data, and a tiny end-to-end run whose rerun is fully cached."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from w2s.config.classification import AuxLossConfig, ClassificationConfig, ClsDataConfig, FeaturesConfig
from w2s.classification.heads import aux_confidence_loss, alpha_at, hardened_targets, two_class
from w2s.classification.metrics import accuracy, ece, pgr, weak_error_agreement


# ----------------------------------------------------------------------------------------- metrics
def test_ece_by_hand():
    # confidences 0.92, 0.81, 0.65, 0.64 → bins (0.9,1], (0.8,0.9], (0.6,0.7] ×2; correct 1, 0, 1, 1
    p, y = np.array([0.92, 0.81, 0.35, 0.64]), np.array([1, 0, 0, 1])
    expected = 0.25 * abs(1 - 0.92) + 0.25 * abs(0 - 0.81) + 0.5 * abs(1 - (0.65 + 0.64) / 2)
    assert ece(p, y, n_bins=10) == pytest.approx(expected) == pytest.approx(0.4)
    assert ece(p, y, n_bins=1) == pytest.approx(abs(0.75 - np.mean([0.92, 0.81, 0.65, 0.64])))


def _ece_loop(p, y, n_bins):
    """Independent ECE: explicit bin edges and a per-example loop."""
    edges = [i / n_bins for i in range(n_bins + 1)]
    members = [[] for _ in range(n_bins)]
    for prob, label in zip(p, y):
        pred = 1 if prob >= 0.5 else 0
        conf = prob if pred == 1 else 1 - prob
        b = next(i for i in range(n_bins) if edges[i] < conf <= edges[i + 1])
        members[b].append((conf, pred == label))
    return sum(len(m) / len(p) * abs(np.mean([c for _, c in m]) - np.mean([f for f, _ in m])) for m in members if m)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_a_loop_and_is_small_when_calibrated(n_bins):
    rng = np.random.default_rng(n_bins)
    p = rng.uniform(0.001, 0.999, 4000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # calibrated by construction
    assert ece(p, y, n_bins) == pytest.approx(_ece_loop(p, y, n_bins), abs=1e-12)
    assert ece(p, y, n_bins) < 0.03
    overconfident = np.where(p >= 0.5, 1.0 - 1e-6, 1e-6)  # same predictions, confidence 1
    assert ece(overconfident, y, n_bins) == pytest.approx(1 - accuracy(p, y), abs=1e-5)


def test_pgr_and_weak_error_agreement_by_hand():
    assert pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.55, 0.8) == pytest.approx(-0.25)
    assert math.isnan(pgr(0.7, 0.8, 0.7))
    y = np.array([1, 1, 0, 0, 1])
    weak = np.array([0.2, 0.9, 0.7, 0.1, 0.4])  # wrong on 0, 2, 4
    student = np.array([0.1, 0.9, 0.2, 0.3, 0.8])  # repeats the weak error on 0 only
    assert weak_error_agreement(student, weak, y) == pytest.approx(1 / 3)
    assert accuracy(student, y) == pytest.approx(4 / 5)


# ---------------------------------------------------------------------------------------- aux loss
def test_aux_loss_is_the_papers_mixture_and_its_gradient_is_right():
    torch.manual_seed(0)
    logits = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    weak = torch.rand(12, dtype=torch.float64)
    alpha = 0.3
    hard = hardened_targets(logits, weak)
    loss = aux_confidence_loss(logits, weak, alpha)
    separate = (1 - alpha) * F.cross_entropy(logits, two_class(weak)) + alpha * F.cross_entropy(logits, hard)
    assert loss.item() == pytest.approx(separate.item(), rel=1e-12)
    # analytic gradient of mean soft CE: (softmax − target)/B, hardened labels held constant
    (grad,) = torch.autograd.grad(loss, logits)
    target = (1 - alpha) * two_class(weak) + alpha * hard
    assert torch.allclose(grad, (torch.softmax(logits, -1) - target) / 12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: aux_confidence_loss(z, weak, alpha, hardened=hard), (logits,))


def test_hardening_threshold_matches_the_weak_label_share_and_alpha_warms_up():
    torch.manual_seed(1)
    logits = torch.randn(200, 2)
    for share in (0.1, 0.5, 0.8):
        weak = torch.full((200,), share)
        hard = hardened_targets(logits, weak)
        assert abs(hard[:, 1].mean().item() - share) <= 1 / 200
        p1 = torch.softmax(logits, -1)[:, 1]  # hardened positives are the most confident ones
        assert p1[hard[:, 1] == 1].min() >= p1[hard[:, 1] == 0].max()
    cfg = AuxLossConfig(alpha_max=0.75, warmup_frac=0.2)
    assert [alpha_at(f, cfg) for f in (0.0, 0.1, 0.2, 0.9)] == pytest.approx([0.0, 0.375, 0.75, 0.75])


# -------------------------------------------------------------------------------- data and features
def test_review_task_is_seeded_disjoint_and_labelled_by_its_rule():
    from w2s.classification.data import NEGATIONS, NEGATIVE, POSITIVE, build_table, word_pools

    cfg = ClsDataConfig(n_weak_train=60, n_w2s_train=60, n_test=60)
    table = build_table(cfg)
    assert table.equals(build_table(cfg))
    texts = table.column("text").to_pylist()
    assert len(set(texts)) == len(texts) == 180
    pools = word_pools(True)
    assert not set(pools["test"][0] + pools["test"][1]) & set(pools["weak_train"][0] + pools["weak_train"][1])
    negations = [n.split("{")[0].strip() for n in NEGATIONS]
    checked = 0
    for text, label in zip(texts, table.column("label").to_pylist()):
        if "," in text.split(", ", 1)[-1] or " and " in text:
            continue  # one-clause reviews only: an independent reading of the rule
        adj = text.rstrip(".").split()[-1]
        polarity = 1 if adj in POSITIVE else -1 if adj in NEGATIVE else 0
        assert polarity != 0
        if any(f" {n} " in f" {text} " for n in negations) and "could not have been more" not in text:
            polarity = -polarity
        assert label == int(polarity > 0), text
        checked += 1
    assert checked >= 20


def test_hf_loader_reads_a_local_file(tmp_path):
    from w2s.classification.data import build_table

    path = tmp_path / "tiny.csv"
    path.write_text("text,label\n" + "".join(f"example {i},{i % 2}\n" for i in range(12)))
    cfg = ClsDataConfig(source="hf", n_weak_train=4, n_w2s_train=4, n_test=3,
                        hf={"path": "csv", "data_files": str(path)})
    table = build_table(cfg)
    assert table.num_rows == 11
    assert sorted(table.column("split").to_pylist()).count("test") == 3
    for text, label in zip(table.column("text").to_pylist(), table.column("label").to_pylist()):
        assert label == int(text.split()[-1]) % 2


def test_layer_k_features_equal_the_model_truncated_to_k(tiny_char_model_dir, tmp_path):
    from w2s.classification.features import extract
    from w2s.models.build import load_pretrained, save_model, truncate_layers

    texts = ["the food was great.", "Honestly, the room was not clean and the staff was rude."]
    cfg = FeaturesConfig(batch_size=2)
    full = extract(tiny_char_model_dir, texts, [1, None], cfg)
    model, tokenizer = load_pretrained(tiny_char_model_dir)
    save_model(truncate_layers(model, 1), tokenizer, tmp_path / "cut")
    cut = extract(tmp_path / "cut", texts, [None], cfg)
    assert np.allclose(full["L1"], cut["final"], atol=1e-5)
    assert not np.allclose(full["L1"], full["final"], atol=1e-3)
    # rows come back in the caller's order although batches are formed by length
    more = texts + ["ok.", "the view was far from lovely, the bed was cozy and the price was fair."]
    forward, backward = extract(tiny_char_model_dir, more, [None], cfg)["final"], extract(tiny_char_model_dir, more[::-1], [None], cfg)["final"]
    assert np.allclose(forward, backward[::-1], atol=1e-5)
    assert np.allclose(forward[:2], full["final"], atol=1e-5)


# ------------------------------------------------------------------------------------------- flow
def _tiny_config(root) -> ClassificationConfig:
    tiny = {"tokenizer": "char", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
    return ClassificationConfig.model_validate({
        "run": {"artifact_root": str(root), "experiment": "cls-test"},
        "data": {"n_weak_train": 40, "n_w2s_train": 40, "n_test": 40},
        "models": {"weak": {"source": "tiny_random", "tiny": {**tiny, "num_layers": 1}},
                   "strong": {"source": "tiny_random", "tiny": tiny}, "bootstrap_layers": [1]},
        "features": {"max_length": 48},
        "weak_head": {"kind": "linear", "epochs": 2}, "strong_head": {"epochs": 2, "hidden": 16},
        "evaluation": {"seeds": 1}, "epochs_ablation": {"epochs": [1, 3]},
    })


def test_tiny_flow_runs_reports_and_its_rerun_is_cached(tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.w2s_classification import w2s_classification

    cfg = _tiny_config(tmp_path / "art")
    first = w2s_classification(config=cfg)
    assert {r.cache for r in first.rows} == {"miss"}
    second = w2s_classification(config=cfg)
    assert [r.cache for r in second.rows] == ["hit"] * len(first.rows)
    assert [r.uri for r in second.rows] == [r.uri for r in first.rows]

    report = next(r for r in first.rows if r.stage == "cls_report")
    s = json.loads((tmp_path / "art" / "cls_report" / report.uri.rsplit("/", 1)[-1] / "summary.json").read_text())
    gap = s["ceiling"]["acc"] - s["weak"]["acc"]
    if abs(gap) > 1e-9:
        assert s["w2s_ce"]["pgr"] == pytest.approx((s["w2s_ce"]["acc"] - s["weak"]["acc"]) / gap)
    assert [r["epochs"] for r in s["epochs"]] == [1, 3]
    assert [step["model"] for step in s["bootstrap"]] == ["L1", "final"]
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(report.mlflow_run_id)}
    assert {"pgr.png", "epochs.png", "probes.png", "report.md"} <= artifacts


def test_cli_rejects_a_bad_classification_config_before_any_compute(tmp_path, capsys):
    from w2s.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"run: {{artifact_root: {tmp_path / 'art'}}}\naux: {{alpha_max: 2}}\n")
    assert main(["classification", "--config", str(config)]) == 2
    assert "aux.alpha_max" in capsys.readouterr().err
    assert main(["classification", "--config", str(config), "--set", "aux.alpha_max=0.5", "--set", "data.n_tests=3"]) == 2
    assert "unknown key 'data.n_tests'" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()
