"""The typed config of the `w2s_classification` flow (configs/classification.yaml overrides it).

A separate root from the EVE `PipelineConfig`: the classification experiments (Burns et al. 2023,
papers/002; the epochs ablation of papers/001 §4.3) share only `run` (artifact root, tracking) and the
model specs' schema with EVE. Each stage reads one slice (built in tasks/classification.py), so e.g.
changing `aux.alpha_max` reruns the w2s stage and the report, never feature extraction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from w2s.config import HFSource, ModelSpec, RunConfig, RunScoped, Section
from w2s.config.base import MAX_COUNT, Batch, PositiveInt, Rows, Seed, Steps, Tokens, Width


class ReviewTaskConfig(Section):
    """The embedded task (w2s/classification/data.py): short reviews, label = overall sentiment."""

    min_clauses: PositiveInt = Field(1, description="Clauses per review, lower bound (odd counts avoid ties).")
    max_clauses: PositiveInt = Field(1, description="Clauses per review, upper bound.")
    p_negation: float = Field(0.3, ge=0, le=1, description="Chance a clause is negated (flips its polarity).")
    p_intensifier: float = Field(0.1, ge=0, le=1, description="Chance of 'could not have been more X' (keeps the polarity).")
    heldout_words: bool = Field(
        True, description="Test reviews use adjectives never seen in training: the label must come from "
        "the LM's knowledge of word sentiment, not from memorised words."
    )

    @model_validator(mode="after")
    def _bounds(self) -> ReviewTaskConfig:
        if self.max_clauses < self.min_clauses:
            raise ValueError("max_clauses must be >= min_clauses")
        return self


class HFClassificationData(HFSource):
    """A real binary task through `datasets`."""

    text_column: str = "text"
    label_column: str = "label"


class ClsDataConfig(Section):
    source: Literal["synthetic", "hf"] = "synthetic"
    seed: Seed = Field(0, description="Seed of the examples and of the three splits.")
    n_weak_train: Rows = Field(400, description="Half A: the weak model's ground-truth training set.")
    n_w2s_train: Rows = Field(400, description="Half B: weak labels train the strong model; its ground truth trains the ceiling.")
    n_test: Rows = Field(400, description="Held-out test set for every metric.")
    synthetic: ReviewTaskConfig = ReviewTaskConfig()
    hf: HFClassificationData | None = None

    @model_validator(mode="after")
    def _source_needs_section(self) -> ClsDataConfig:
        if self.source == "hf" and self.hf is None:
            raise ValueError("source 'hf' needs a data.hf section (path, text_column, label_column)")
        return self


class ClsModelsConfig(Section):
    weak: ModelSpec = ModelSpec(truncate_layers=4)
    # SmolLM2-135M probes best mid-network on the review task (docs/classification.md): the strong
    # model is its first 16 of 30 layers
    strong: ModelSpec = ModelSpec(truncate_layers=16)
    bootstrap_layers: list[PositiveInt] = Field(
        [8, 12], description="Intermediate models of the bootstrapping chain: the strong model cut to these "
        "depths (ascending), weak → each → strong."
    )

    @model_validator(mode="after")
    def _ascending(self) -> ClsModelsConfig:
        if list(self.bootstrap_layers) != sorted(set(self.bootstrap_layers)):
            raise ValueError("bootstrap_layers must be strictly ascending")
        return self


class FeaturesConfig(Section):
    pooling: Literal["mean", "last"] = Field("mean", description="Pool hidden states over the tokens: mean, or the last token.")
    max_length: Tokens = 64
    batch_size: Batch = 32


class HeadConfig(Section):
    """A head trained on frozen LM features (the deviation from full fine-tuning: docs/classification.md)."""

    kind: Literal["linear", "mlp"] = Field("mlp", description="linear: a linear probe; mlp: one hidden layer (stands in for fine-tuning).")
    hidden: Width = 256
    epochs: Steps = 20
    batch_size: Batch = 32
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class AuxLossConfig(Section):
    """Burns et al.'s confidence loss L = (1−α)·CE(f, f_w) + α·CE(f, f̂_t)."""

    alpha_max: float = Field(0.75, ge=0, le=1, description="α after warm-up (Burns: 0.75 for the largest students).")
    warmup_frac: float = Field(0.2, ge=0, le=1, description="α rises linearly from 0 over this fraction of the steps.")


class ClsEvalConfig(Section):
    ece_bins: PositiveInt = Field(10, description="Equal-width confidence bins of the ECE.")
    seeds: PositiveInt = Field(3, description="Head-training seeds each student metric is averaged over.")


class EpochsAblationConfig(Section):
    epochs: list[Steps] = Field([1, 2, 4, 8, 16, 32, 64], max_length=MAX_COUNT,
                                description="Epoch counts at which the w2s student is evaluated (papers/001 §4.3).")


class ClassificationConfig(RunScoped):
    run: RunConfig = RunConfig(experiment="w2s-classification")
    data: ClsDataConfig = ClsDataConfig()
    models: ClsModelsConfig = ClsModelsConfig()
    features: FeaturesConfig = FeaturesConfig()
    weak_head: HeadConfig = HeadConfig()
    strong_head: HeadConfig = HeadConfig()
    aux: AuxLossConfig = AuxLossConfig()
    evaluation: ClsEvalConfig = ClsEvalConfig()
    epochs_ablation: EpochsAblationConfig = EpochsAblationConfig()


# ------------------------------------------------------------------ stage slices (what each reads)
class FeatureSlice(Section):
    features: FeaturesConfig
    layers: list[PositiveInt | None] = Field(description="Depths to pool (None: the model's last layer).")


class TeacherSlice(Section):
    head: HeadConfig
    seed: Seed
    ece_bins: PositiveInt


class StudentSlice(Section):
    head: HeadConfig
    seed: Seed
    evaluation: ClsEvalConfig
    aux: AuxLossConfig | None = None
    epochs: list[PositiveInt] | None = None
    bootstrap_layers: list[PositiveInt] | None = None


def seeds_of(cfg: StudentSlice) -> list[int]:
    return [cfg.seed + i for i in range(cfg.evaluation.seeds)]


def student_slice(config: ClassificationConfig, **extra) -> StudentSlice:
    return StudentSlice(head=config.strong_head, seed=config.run.seed, evaluation=config.evaluation, **extra)


def load_classification_config(path=None, overrides: list[str] | None = None) -> ClassificationConfig:
    """YAML file + `--set key=value` overrides → the validated config (w2s.config.loading.load_config)."""
    from w2s.config.loading import load_config

    return load_config(path, overrides, schema=ClassificationConfig)
