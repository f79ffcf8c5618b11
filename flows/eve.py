"""The EVE pipeline (paper §3.3, §4.3; DESIGN.md steps 1–7) as a Prefect flow, with its evaluation.

    w2s run --config pipeline_config.yaml              # the embedded CPU default, end to end
    w2s run --config configs/tiny.yaml --until data    # stop after a stage

Stages: data → strong_base → weak_base → weak_sft (π_weak_ref) → weak_dpo (π_weak) → weak_demos
(D_weak + the exemplar pool) → sampling (K few-shot samples of π_ref_strong) → scoring (log π_weak, log
π_weak_ref) → weights (F, eq. 8) → naive SFT's data (D_weak, or with `baselines.naive_sft_data:
matched` matched_demos, π_weak's K answers to each student prompt) → teacher_signal (the weak
teacher's gold signal on EVE's data against naive SFT's; `--until teacher_signal` reads it before any
student trains) → student (weighted MLE); then the PGR anchors (the strong ceiling strong_sft →
strong_dpo), naive SFT (the paper's main comparison, fig. 3/4: the strong base trained on that data),
each policy's evaluation on the test prompts and the PGR report.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from tasks.base_models import strong_base, weak_base
from tasks.data import data as prepare_data
from tasks.evaluate import evaluate
from tasks.matched_demos import matched_demos
from tasks.naive_sft import naive_sft
from tasks.report import report
from tasks.sampling import sampling as strong_sampling
from tasks.scoring import scoring
from tasks.strong_ceiling import strong_dpo, strong_sft
from tasks.student import student
from tasks.teacher_signal import teacher_signal
from tasks.weak_demos import weak_demos
from tasks.weak_dpo import weak_dpo
from tasks.weak_sft import weak_sft
from tasks.weights import weights as f_weights
from w2s.artifacts import ArtifactRef
from w2s.config import PipelineConfig
from w2s.config.presets import PipelinePreset
from w2s.orchestration import PipelineState, embedded_default, pipeline_run
from w2s.tracking import RunContext


@dataclass(frozen=True)
class EveArtifacts:
    data: ArtifactRef
    strong: ArtifactRef
    weak_ref: ArtifactRef
    weak: ArtifactRef
    demos: ArtifactRef
    scores: ArtifactRef
    weights: ArtifactRef
    naive_sft_data: ArtifactRef
    signal: ArtifactRef
    student: ArtifactRef


def eve_stages(ctx: RunContext, config: PipelineConfig) -> EveArtifacts:
    data = prepare_data(ctx, config)
    strong = strong_base(ctx, config)
    weak = weak_base(ctx, config)
    weak_ref_model = weak_sft(ctx, config, data=data, base=weak)
    weak_model = weak_dpo(ctx, config, data=data, weak_ref=weak_ref_model)
    demos = weak_demos(ctx, config, data=data, weak=weak_model, weak_ref=weak_ref_model)
    samples = strong_sampling(ctx, config, exemplars=demos, data=data, strong=strong)
    scores = scoring(ctx, config, samples=samples, weak=weak_model, weak_ref=weak_ref_model)
    weights = f_weights(ctx, config, scores=scores)
    sft_data = naive_sft_demos(ctx, config, data=data, weak=weak_model, demos=demos)
    signal = teacher_signal(ctx, config, data=data, demos=sft_data, scores=scores)  # the gate: read it before any student trains
    eve_student = student(ctx, config, weights=weights, strong=strong)
    return EveArtifacts(data, strong, weak_ref_model, weak_model, demos, scores, weights, sft_data, signal, eve_student)


def anchor_evaluations(ctx: RunContext, config: PipelineConfig, eve: EveArtifacts) -> dict[str, ArtifactRef]:
    """What PGR and win-rates are measured against: π_weak, π_strong (the ceiling), π_ref_strong."""
    ceiling = strong_dpo(ctx, config, data=eve.data, strong_sft=strong_sft(ctx, config, data=eve.data, strong=eve.strong))
    return {
        "weak": evaluate("weak")(ctx, config, data=eve.data, policy=eve.weak),
        "reference": evaluate("reference")(ctx, config, data=eve.data, policy=eve.strong),
        "strong_ceiling": evaluate("strong_ceiling")(ctx, config, data=eve.data, policy=ceiling, kl_ref=eve.strong),
    }


def evaluate_eve(ctx: RunContext, config: PipelineConfig, eve: EveArtifacts) -> ArtifactRef:
    return evaluate("eve")(ctx, config, data=eve.data, policy=eve.student, kl_ref=eve.strong)


def naive_sft_demos(ctx: RunContext, config: PipelineConfig, data: ArtifactRef, weak: ArtifactRef, demos: ArtifactRef) -> ArtifactRef:
    """D_weak (§5), or π_weak's K answers to EVE's own student prompts (equal training size, fig. 6)."""
    if config.baselines.naive_sft_data == "matched":
        return matched_demos(ctx, config, data=data, weak=weak)
    return demos


def evaluate_students(ctx: RunContext, config: PipelineConfig, eve: EveArtifacts) -> dict[str, ArtifactRef]:
    """The paper's main comparison: EVE's student and naive SFT on the weak teacher's answers."""
    sft = naive_sft(ctx, config, demos=eve.naive_sft_data, strong=eve.strong)
    return {"eve": evaluate_eve(ctx, config, eve),
            "naive_sft": evaluate("naive_sft")(ctx, config, data=eve.data, policy=sft, kl_ref=eve.strong)}


def eve_diagnostics(ctx: RunContext, config: PipelineConfig, eve: EveArtifacts) -> dict[str, ArtifactRef]:
    """What the report shows beside the policies: the F-weights and the weak teacher's gold signal."""
    return {"weights": eve.weights, "signal": eve.signal}


def eve_policies(ctx: RunContext, config: PipelineConfig) -> tuple[dict[str, ArtifactRef], dict[str, ArtifactRef]]:
    """The paper's comparison, each policy evaluated (label → evaluation), and EVE's diagnostics."""
    stages = eve_stages(ctx, config)
    return anchor_evaluations(ctx, config, stages) | evaluate_students(ctx, config, stages), eve_diagnostics(ctx, config, stages)


@flow(name="eve", log_prints=True)
def eve(config: PipelineConfig = embedded_default(), preset: PipelinePreset | None = None, until: str | None = None) -> PipelineState:
    with pipeline_run(config, "eve", until, preset=preset) as run:
        evaluations, diagnostics = eve_policies(run.ctx, run.config)
        report(run.ctx, run.config, evaluations=evaluations, **diagnostics)
    return run
