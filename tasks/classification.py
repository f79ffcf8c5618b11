"""Stages of the `w2s_classification` flow (Burns et al. on LM features; papers/001 §4.3 epochs ablation).

    w2s classification --config configs/classification.yaml

cls_data (seeded review task or `datasets`) → strong_base / weak_base (the EVE stages, shared cache)
→ cls_features (pooled hidden states, .npy; the strong model's at every bootstrap depth too)
→ cls_weak_teacher (weak head on half A's ground truth; soft labels of half B) → cls_ceiling (strong
head on B's ground truth) → cls_w2s (strong head on the weak labels: CE and the aux confidence loss)
→ cls_bootstrap → cls_probes → cls_epochs → cls_report (tasks/classification_report.py).
Core logic: w2s/classification/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from w2s.artifacts import ArtifactRef, store_for
from w2s.classification import experiments as ex
from w2s.config.classification import (
    ClsDataConfig, FeatureSlice, StudentSlice, TeacherSlice, seeds_of, student_slice,
)
from w2s.classification.data import build_table
from w2s.classification.features import extract, layer_name
from w2s.classification.metrics import summary
from w2s.stage import Body, StageOutput, stage
from w2s.tracking import RunContext



def local(ctx: RunContext, ref: ArtifactRef) -> Path:
    return store_for(ctx.artifact_root).materialise(ref)


def read_json(ctx: RunContext, ref: ArtifactRef, name: str = "results.json"):
    return json.loads((local(ctx, ref) / name).read_text())


def load_npy(ctx: RunContext, ref: ArtifactRef, name: str) -> np.ndarray:
    return np.load(local(ctx, ref) / name, allow_pickle=False)


def examples(ctx: RunContext, data: ArtifactRef):
    return pq.read_table(local(ctx, data) / "examples.parquet")


def views(ctx: RunContext, data: ArtifactRef, features: ArtifactRef, name: str = "final") -> ex.Views:
    table = examples(ctx, data)
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    split = np.asarray(table.column("split").to_pylist())
    return ex.Views.of(load_npy(ctx, features, f"features/{name}.npy"), labels, split)


def _write(writer, results) -> None:
    writer.write_json("results.json", results)


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics for the manifest/MLflow: an undefined PGR (no weak–ceiling gap) is NaN, which the
    manifest cannot hold; it stays in results.json."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


# ------------------------------------------------------------------------------------------ stages
@stage(version=1, reads=lambda c: c.data)
def cls_data(ctx: RunContext, cfg: ClsDataConfig) -> Body:
    def body(writer, run) -> StageOutput:
        table = build_table(cfg)
        writer.write_parquet("examples.parquet", table)
        labels = np.asarray(table.column("label").to_pylist())
        return StageOutput(finite({"rows": table.num_rows, "positive_rate": float(labels.mean())}))

    return body


def _features(ctx: RunContext, cfg: FeatureSlice, data: ArtifactRef, model: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        texts = examples(ctx, data).column("text").to_pylist()
        pooled = extract(local(ctx, model) / "model", texts, cfg.layers, cfg.features)
        for name, array in pooled.items():
            np.save(writer.path(f"features/{name}.npy"), array, allow_pickle=False)
        dim = next(iter(pooled.values())).shape[1]
        return StageOutput({"rows": len(texts), "dim": dim}, {"layers": sorted(pooled)})

    return body


@stage(version=1, reads=lambda c: FeatureSlice(features=c.features, layers=[None]))
def cls_weak_features(ctx: RunContext, cfg: FeatureSlice, data: ArtifactRef, model: ArtifactRef) -> Body:
    return _features(ctx, cfg, data, model)


@stage(version=1, reads=lambda c: FeatureSlice(features=c.features, layers=[*c.models.bootstrap_layers, None]))
def cls_strong_features(ctx: RunContext, cfg: FeatureSlice, data: ArtifactRef, model: ArtifactRef) -> Body:
    """The strong model's at every bootstrap depth too."""
    return _features(ctx, cfg, data, model)


@stage(version=1, reads=lambda c: TeacherSlice(head=c.weak_head, seed=c.run.seed, ece_bins=c.evaluation.ece_bins))
def cls_weak_teacher(ctx: RunContext, cfg: TeacherSlice, data: ArtifactRef, weak_features: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        view = views(ctx, data, weak_features)
        out = ex.train_teacher(view, cfg.head, cfg.seed)
        for name, array in out.items():
            np.save(writer.path(f"{name}.npy"), array, allow_pickle=False)
        metrics = summary(out["p_test"], view.y_test, cfg.ece_bins)
        metrics["label_acc_b"] = float(np.mean((out["p_b"] >= 0.5) == view.y_b))
        _write(writer, metrics)
        return StageOutput(finite(metrics))

    return body


@stage(version=1, reads=student_slice)
def cls_ceiling(ctx: RunContext, cfg: StudentSlice, data: ArtifactRef, strong_features: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        metrics, p = ex.ceiling(views(ctx, data, strong_features), cfg.head, seeds_of(cfg), cfg.evaluation.ece_bins)
        np.save(writer.path("p_test.npy"), p, allow_pickle=False)
        _write(writer, metrics)
        return StageOutput(finite(metrics))

    return body


def _anchors(ctx: RunContext, teacher: ArtifactRef, ceiling: ArtifactRef):
    return (load_npy(ctx, teacher, "p_b.npy"), load_npy(ctx, teacher, "p_test.npy"),
            read_json(ctx, teacher)["acc"], read_json(ctx, ceiling)["acc"])


@stage(version=1, reads=lambda c: student_slice(c, aux=c.aux))
def cls_w2s(ctx: RunContext, cfg: StudentSlice, data: ArtifactRef, strong_features: ArtifactRef,
            teacher: ArtifactRef, ceiling: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        view = views(ctx, data, strong_features)
        p_b, p_weak, acc_weak, acc_ceiling = _anchors(ctx, teacher, ceiling)
        common = (view, p_b, p_weak, acc_weak, acc_ceiling, cfg.head, seeds_of(cfg), cfg.evaluation.ece_bins)
        naive, p_naive = ex.w2s(*common)
        aux, p_aux = ex.w2s(*common, aux=cfg.aux)
        np.save(writer.path("p_test_ce.npy"), p_naive, allow_pickle=False)
        np.save(writer.path("p_test_aux.npy"), p_aux, allow_pickle=False)
        _write(writer, {"ce": naive, "aux": aux})
        return StageOutput(finite({f"ce_{k}": v for k, v in naive.items()} | {f"aux_{k}": v for k, v in aux.items()}))

    return body


@stage(version=1, reads=lambda c: student_slice(c, bootstrap_layers=c.models.bootstrap_layers))
def cls_bootstrap(ctx: RunContext, cfg: StudentSlice, data: ArtifactRef, strong_features: ArtifactRef,
                  teacher: ArtifactRef, ceiling: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        names = [layer_name(layer) for layer in cfg.bootstrap_layers or []] + ["final"]
        chain = [views(ctx, data, strong_features, name) for name in names]
        p_b, p_weak, acc_weak, acc_ceiling = _anchors(ctx, teacher, ceiling)
        runs = [ex.bootstrap(chain, p_b, p_weak, acc_weak, acc_ceiling, cfg.head, seed, cfg.evaluation.ece_bins)
                for seed in seeds_of(cfg)]
        steps = [{"model": name, **ex.mean_rows([r[i] for r in runs])} for i, name in enumerate(names)]
        _write(writer, {"steps": steps})
        return StageOutput(finite({f"{s['model']}_{k}": v for s in steps for k, v in s.items() if k != "model"}))

    return body


@stage(version=1, reads=student_slice)
def cls_probes(ctx: RunContext, cfg: StudentSlice, data: ArtifactRef, strong_features: ArtifactRef, teacher: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        lp = cfg.head.model_copy(update={"kind": "linear"})
        ft = cfg.head.model_copy(update={"kind": "mlp"})
        metrics = ex.probes(views(ctx, data, strong_features), load_npy(ctx, teacher, "p_b.npy"), lp, ft, seeds_of(cfg))
        _write(writer, metrics)
        return StageOutput(finite(metrics))

    return body


@stage(version=1, reads=lambda c: student_slice(c, epochs=c.epochs_ablation.epochs))
def cls_epochs(ctx: RunContext, cfg: StudentSlice, data: ArtifactRef, strong_features: ArtifactRef,
               teacher: ArtifactRef, ceiling: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        view = views(ctx, data, strong_features)
        p_b, p_weak, acc_weak, acc_ceiling = _anchors(ctx, teacher, ceiling)
        rows = ex.epochs_ablation(view, p_b, p_weak, acc_weak, acc_ceiling, cfg.head, list(cfg.epochs or []),
                                  seeds_of(cfg), cfg.evaluation.ece_bins)
        for row in rows:
            run.log_metrics({"acc": row["acc"], "ece": row["ece"]}, step=int(row["epochs"]))
        _write(writer, {"rows": rows})
        return StageOutput(finite({f"acc_ep{int(r['epochs'])}": r["acc"] for r in rows} | {f"ece_ep{int(r['epochs'])}": r["ece"] for r in rows}))

    return body
