"""What every training stage shares: its config slice and the call into the training engine.

A training stage writes into its artifact folder: `model/` (final HF folder), `checkpoints/step-*/`
(the fractions in `checkpoint_fractions`) and, while running, `.resume/` (DeepSpeed state, removed
at the end), so rerunning a killed stage resumes where it stopped. The trainer's result (steps,
checkpoints, loss history) goes into the manifest's `info`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from w2s import faults
from w2s.artifacts import ArtifactRef, store_for
from w2s.writer import StageWriter
from w2s.config import DPOConfig, StudentConfig, TrainConfig, TrainingEngineConfig
from w2s.stage import Body, StageOutput
from w2s.tracking import RunContext, StageRun


class TrainingSlice(BaseModel):
    """The config a training stage reads: its own section, the engine, the seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    train: StudentConfig | DPOConfig | TrainConfig
    engine: TrainingEngineConfig
    seed: int
    # The trainer's own version, in every training stage's key: bump when w2s/training changes what
    # a model learns. 2: the completion starts at the longest common prefix (w2s/text.py), as in scoring.
    # 3: bf16 is autocast over fp32 weights (w2s/training/engine.py), DPO's reference in that format.
    trainer: int = 3


def training_slice(section: TrainConfig, config) -> TrainingSlice:
    """The precision is resolved here, so the key says which format trained the model."""
    from w2s.precision import resolve

    engine = config.engines.training
    return TrainingSlice(train=section, engine=engine.model_copy(update={"precision": resolve(engine.precision)}), seed=config.run.seed)


def run_training(writer: StageWriter, run: StageRun, cfg: TrainingSlice, objective: str, base_model: Path,
                 data_files: Sequence[Path]) -> StageOutput:
    from w2s.training import train

    writer.claim("model")  # the trainer exports it into writer.dir; checkpoints and resume state it seals
    result = train(cfg.train, cfg.engine, objective, base_model, [str(p) for p in data_files], writer.dir,
                   run=run, seed=cfg.seed, on_step=lambda step, _: faults.checkpoint(writer.stage, step),
                   partial=writer.partial)
    # The result file carries wall-clock timings: keep it in the manifest's info (unhashed) rather
    # than as an artifact file, so identical training gives identical artifact digests.
    (writer.dir / "train_result.json").unlink(missing_ok=True)
    checkpoints = [{"step": c.step, "fraction": c.fraction, "path": c.path} for c in result.checkpoints]  # relative to writer.dir
    timing = {"step_s", "tokens_per_s", "mean_tokens_per_s"}
    history = [{k: v for k, v in h.items() if k not in timing} for h in result.history]
    return StageOutput(result.metrics, {"objective": objective, "steps": result.steps, "checkpoints": checkpoints,
                                        "resumed_from_step": result.resumed_from_step, "history": history})


def train_on_gold_preferences(ctx: RunContext, cfg: TrainingSlice, objective: str, data: ArtifactRef, base: ArtifactRef) -> Body:
    """SFT on the gold *chosen* responses, or DPO on the gold pairs (§9.2), from `base`'s model.
    The weak teacher (weak_sft → weak_dpo) and the strong ceiling (strong_sft → strong_dpo) share it."""
    from w2s.data.splits import read_preferences
    from w2s.tables import model_dir

    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        prefs = read_preferences(store.materialise(data), data.stage)
        if objective == "sft":
            table, name = pa.table({"prompt": prefs["prompt"], "completion": prefs["chosen"]}), "train/chosen.parquet"
        else:
            table, name = prefs.select(["prompt", "chosen", "rejected"]), "train/pairs.parquet"
        writer.write_parquet(name, table)
        return run_training(writer, run, cfg, objective, model_dir(base, store), [writer.path(name)])

    return body
