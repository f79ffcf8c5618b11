"""Weak-to-strong classification (Burns et al. 2023, papers/002; epochs ablation of papers/001 §4.3)
as a Prefect flow on LM features.

    w2s classification --config configs/classification.yaml      # embedded CPU default, a few minutes
    w2s classification --config configs/classification.yaml --set aux.alpha_max=0.5

Weak head on half A's ground truth → its soft labels on half B → strong head on them (CE, and the aux
confidence loss) vs the strong ceiling on B's ground truth; bootstrapping through truncations of the
strong model; linear probe vs fine-tune; accuracy and ECE vs epochs. docs/classification.md.
"""

from __future__ import annotations

from prefect import flow

from tasks.base_models import strong_base, weak_base
from tasks.classification import cls_bootstrap as bootstrap
from tasks.classification import cls_ceiling as strong_ceiling
from tasks.classification import cls_data as prepare_data
from tasks.classification import cls_epochs as epochs_ablation
from tasks.classification import cls_probes as probes
from tasks.classification import cls_strong_features as strong_features
from tasks.classification import cls_w2s as weak_to_strong
from tasks.classification import cls_weak_features as weak_features
from tasks.classification import cls_weak_teacher as weak_teacher
from tasks.classification_report import cls_report as report
from w2s.config.classification import ClassificationConfig
from w2s.orchestration import PipelineState, pipeline_run


@flow(name="w2s_classification", log_prints=True)
def w2s_classification(config: ClassificationConfig = ClassificationConfig()) -> PipelineState:
    with pipeline_run(config, "w2s_classification") as run:
        data = prepare_data(run.ctx, config)
        strong = strong_base(run.ctx, config)
        weak = weak_base(run.ctx, config)
        weak_feats = weak_features(run.ctx, config, data=data, model=weak)
        strong_feats = strong_features(run.ctx, config, data=data, model=strong)
        teacher = weak_teacher(run.ctx, config, data=data, weak_features=weak_feats)
        ceiling = strong_ceiling(run.ctx, config, data=data, strong_features=strong_feats)
        w2s = weak_to_strong(run.ctx, config, data=data, strong_features=strong_feats, teacher=teacher, ceiling=ceiling)
        chain = bootstrap(run.ctx, config, data=data, strong_features=strong_feats, teacher=teacher, ceiling=ceiling)
        lp_ft = probes(run.ctx, config, data=data, strong_features=strong_feats, teacher=teacher)
        epochs = epochs_ablation(run.ctx, config, data=data, strong_features=strong_feats, teacher=teacher, ceiling=ceiling)
        report(run.ctx, config, teacher=teacher, ceiling=ceiling, w2s=w2s, bootstrap=chain, probes=lp_ft, epochs=epochs)
    return run
