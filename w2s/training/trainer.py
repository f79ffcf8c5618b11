"""The training loop shared by every training stage: `train(...)` -> `TrainResult`.

One optimiser step = one global batch of `batch_size` rows, the rows of step s being a pure
function of (seed, s) (data.batch_indices). Each rank takes its slice, sorts it by length (less
padding; the gradient is a sum, so grouping does not change it) and cuts it into micro-batches;
the loss denominator is computed over the whole global batch first (objectives docstring), and
DeepSpeed's own 1/accumulation scaling is switched off so the denominator stays exact.

Outputs under `out_dir`: `model/` (final HF folder), `checkpoints/step-NNNNNNN/` (HF folders at
checkpoint_fractions / checkpoint_every_steps), `train_result.json`, and for dpo
`ref_logps.parquet`. Resume state (DeepSpeed checkpoint + RNG + a pointer written last) goes to
`resume_dir` (default `out_dir/.resume`) every `resume_every_steps` and is deleted on success; a
call that finds it continues from there and ends with the same weights as an uninterrupted run.

Every reusable piece (each checkpoint folder, the reference table, each resume tag and its
pointer) is sealed right after it is whole (w2s/partial.py) and reused only while its seal
matches; the resume state is also read as data only (w2s/training/resume.py), so a damaged,
replaced or planted file is discarded and recomputed, never run.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from w2s.config import DPOConfig, StudentConfig, TrainConfig, TrainingEngineConfig
from w2s.partial import PartialFiles
import w2s.training.engine as eng
import w2s.training.resume as resume
from w2s.training.data import TrainData, batch_indices, collate, completion_tokens, example_sequences, load_data, steps_per_epoch
from w2s.training.objectives import OBJECTIVES, dpo_loss, normaliser, sequence_logps, weighted_nll
from w2s.training.reference import REF_FILE, reference_logps, resolve_ref_logps, write_ref_logps


log = logging.getLogger(__name__)

@dataclass
class Checkpoint:
    """An HF model folder at `path`, relative to out_dir (so train_result.json stays valid when
    the artifact is copied elsewhere); the last one is the final model itself."""

    step: int
    fraction: float
    path: str


@dataclass
class TrainResult:
    model_dir: str
    checkpoints: list[Checkpoint]
    metrics: dict[str, float]
    steps: int
    resumed_from_step: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(value: dict) -> TrainResult:
        return TrainResult(**{**value, "checkpoints": [Checkpoint(**c) for c in value["checkpoints"]]})


def total_steps(cfg: TrainConfig, n_rows: int) -> int:
    per_epoch = steps_per_epoch(n_rows, cfg.batch_size)
    return cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * per_epoch))


def checkpoint_steps(cfg: TrainConfig, total: int) -> list[int]:
    steps = {min(total, max(1, round(f * total))) for f in cfg.checkpoint_fractions}
    if cfg.checkpoint_every_steps:
        steps.update(range(cfg.checkpoint_every_steps, total + 1, cfg.checkpoint_every_steps))
    return sorted(steps)


def _normalisation(cfg: TrainConfig) -> str:
    return getattr(cfg, "normalisation", "token_mean")


def _rank_slice(indices: list[int], data: TrainData) -> list[int]:
    world, rank = eng.world_size(), eng.rank()
    share = len(indices) // world
    mine = indices[rank * share : (rank + 1) * share]
    return sorted(mine, key=lambda i: sum(len(s.ids) for s in example_sequences(data, [i])))


def _reduce(values: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of per-rank scalars (one process: unchanged)."""
    if eng.world_size() == 1:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return {k: v / eng.world_size() for k, v in zip(values, tensor.tolist())}


def train(
    cfg: TrainConfig,
    engine: TrainingEngineConfig,
    objective: str,
    model_dir: str | Path,
    data_files: Sequence[str | Path],
    out_dir: str | Path,
    run=None,
    ref_logps=None,
    resume_dir: str | Path | None = None,
    seed: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    partial: PartialFiles | None = None,
) -> TrainResult:
    """Trains `model_dir` on `data_files` with `objective` (sft | weighted_mle | dpo).

    cfg: the stage's TrainConfig (DPOConfig for dpo: β; StudentConfig: normalisation).
    run: an optional StageRun for MLflow metrics. ref_logps (dpo): a pyarrow Table or Parquet path
    from `compute_reference_logps`; None computes them once from the initial weights before the
    first step. on_step(step, metrics) is called after every optimiser step (hooks, tests).
    partial: where finished pieces (checkpoints, the reference table, resume state) are sealed and
    verified before reuse (a stage passes its writer's; default: seals under out_dir).
    With engine.world_size > 1 outside a launcher, re-runs itself under the `deepspeed` launcher.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if objective == "dpo" and not isinstance(cfg, DPOConfig):
        raise ValueError("objective 'dpo' needs a DPOConfig (it carries beta)")
    if engine.world_size > 1 and not eng.in_launcher():
        from w2s.training.launcher import launch

        return TrainResult.from_json(launch(cfg, engine, objective, model_dir, data_files, out_dir, run, ref_logps, resume_dir, seed))
    out_dir, model_dir = Path(out_dir), Path(model_dir)
    resume_path = Path(resume_dir) if resume_dir else out_dir / ".resume"
    pieces = partial if partial is not None else PartialFiles(out_dir)
    # a resume folder outside out_dir keeps its seals beside it
    resume_pieces = pieces if resume_path.is_relative_to(pieces.dir) else PartialFiles(resume_path.parent)
    eng.setup_environment()
    from w2s.models.build import load_pretrained

    # fp32 weights in both precisions: bf16 runs the forward under autocast (engine.deepspeed_config)
    model, tokenizer = load_pretrained(model_dir, dtype=torch.float32)
    data = load_data(data_files, "pair" if objective == "dpo" else "completion", tokenizer, cfg,
                     getattr(model.config, "max_position_embeddings", None))
    weights = [1.0] * len(data) if objective == "sft" else data.weights  # sft ignores a weight column
    total = total_steps(cfg, len(data))
    ckpt_steps = checkpoint_steps(cfg, total)

    torch.manual_seed(seed)  # LoRA init and any dropout
    model = eng.prepare_model(model, cfg, engine)
    ds_engine, _ = eng.initialize(model, cfg, engine, total)
    meta = {"objective": objective, "seed": seed, "total_steps": total, "rows": len(data),
            "zero_stage": engine.zero_stage, "world_size": eng.world_size(),
            "config": json.loads(cfg.model_dump_json())}
    start, pointer = 0, resume.read_resume(resume_path, resume_pieces)
    if pointer is not None:
        stored = {k: pointer.get(k) for k in meta}
        if stored != meta:
            raise ValueError(f"{resume_path} holds the state of a different run ({stored}); delete it to start over")
        # a checkpoint before the resume point cannot be re-exported from resumed weights
        earlier = [s for s in ckpt_steps if s <= pointer["step"] and s != total]
        damaged = [s for s in earlier if not eng.rank0_decides(lambda s=s: pieces.reuse(_checkpoint_dir(out_dir, s)))]
        if damaged:
            log.warning("checkpoints %s are missing or damaged: resume state discarded, training starts over", damaged)
            resume.discard_resume(resume_path, resume_pieces)
            pointer = None

    ref = None
    if objective == "dpo":
        # before any resume state loads: a missing or damaged table is recomputed from the initial
        # weights, which a resumed engine no longer holds, so the resume state goes with it
        if ref_logps is None and eng.rank0_decides(lambda: pieces.reuse(out_dir / REF_FILE)):
            ref_logps = out_dir / REF_FILE  # computed before a kill, and its seal still matches
        if ref_logps is None:
            if pointer is not None:
                log.warning("%s is missing or damaged: resume state discarded, DPO starts over", out_dir / REF_FILE)
                resume.discard_resume(resume_path, resume_pieces)
                pointer = None
            # through the engine, so the reference is computed in the format the policy trains in
            # (autocast for bf16): the first step's margin is then exactly 0, as in fp32
            ref = reference_logps(ds_engine, data, cfg.micro_batch_size, ds_engine.device)
            if eng.rank() == 0:
                write_ref_logps(out_dir / REF_FILE, data, ref)
                pieces.seal(out_dir / REF_FILE)
        else:
            ref = resolve_ref_logps(ref_logps, data)
    if pointer is not None:
        resume.load_resume(ds_engine, resume_path, pointer)
        start = pointer["step"]

    job = _Job(ds_engine, data, weights, ref, cfg, engine, objective, tokenizer, total, ckpt_steps, seed,
               out_dir, model_dir, meta, run, on_step, progress, pieces, resume_path, resume_pieces)
    history = _loop(job, start)

    eng.export_hf(ds_engine, tokenizer, out_dir / "model", cfg, model_dir)
    checkpoints = [Checkpoint(s, s / total, "model" if s == total else f"checkpoints/step-{s:07d}") for s in ckpt_steps]
    summary = {f"final_{k}": v for k, v in (history[-1] if history else {}).items()}
    summary.update({f"data_{k}": v for k, v in data.stats.items()})
    summary["world_size"] = float(eng.world_size())
    summary["warmup_steps"] = float(eng.warmup_steps(cfg, total))  # after the cap: what the schedule used
    if history:
        summary["mean_tokens_per_s"] = sum(h["tokens_per_s"] for h in history) / len(history)
    result = TrainResult(str(out_dir / "model"), checkpoints, summary, total, start or None, history)
    if eng.rank() == 0:
        from w2s.artifacts import atomic_write_bytes

        atomic_write_bytes(out_dir / "train_result.json", json.dumps(result.to_json(), indent=2).encode())
        resume.discard_resume(resume_path, resume_pieces)  # crash-recovery state only, not an output
    if hasattr(ds_engine, "destroy"):
        ds_engine.destroy()  # frees ZeRO hooks and buffers before the next stage builds an engine
    # The engine, its optimiser state and the model hold reference cycles: left to Python's rare full
    # collection, each in-process stage kept ≈ 1.5 GB (SmolLM2-135M) and a flow's process grew to 11.6 GB.
    del job, ds_engine, model, ref
    gc.collect()
    return result


@dataclass
class _Job:
    """Everything the optimisation loop reads, built once by `train`."""

    ds_engine: Any
    data: TrainData
    weights: list[float]
    ref: tuple[torch.Tensor, torch.Tensor] | None
    cfg: TrainConfig
    engine_cfg: TrainingEngineConfig
    objective: str
    tokenizer: Any
    total: int
    ckpt_steps: list[int]
    seed: int
    out_dir: Path
    model_dir: Path
    meta: dict
    run: Any
    on_step: Callable[[int, dict[str, float]], None] | None
    progress: bool
    pieces: PartialFiles
    resume_path: Path
    resume_pieces: PartialFiles


def _checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:07d}"


def _export_checkpoint(job: _Job, done: int) -> None:
    folder = _checkpoint_dir(job.out_dir, done)
    if eng.rank0_decides(lambda: job.pieces.reuse(folder)):
        return  # exported before a kill, same weights, and its seal still matches
    eng.export_hf(job.ds_engine, job.tokenizer, folder, job.cfg, job.model_dir)
    if eng.rank() == 0:
        job.pieces.seal(folder)


def _loop(job: _Job, start: int) -> list[dict[str, float]]:
    from w2s.progress import bar as progress_bar

    ds_engine, data, weights, ref, cfg, engine_cfg = job.ds_engine, job.data, job.weights, job.ref, job.cfg, job.engine_cfg
    objective, tokenizer, total, seed, run, on_step = job.objective, job.tokenizer, job.total, job.seed, job.run, job.on_step

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    norm = _normalisation(cfg)
    beta = getattr(cfg, "beta", None)
    history: list[dict[str, float]] = []
    bar = progress_bar(total=total, initial=start, desc=f"train {objective}", unit="step",
               disable=not job.progress or eng.rank() != 0, dynamic_ncols=True)
    own_clip = eng.trainer_clips(ds_engine.config)  # the dict deepspeed_config built
    trainable = [p for p in ds_engine.module.parameters() if p.requires_grad]
    grad_norm = None
    ds_engine.train()
    for step in range(start, total):
        started = time.perf_counter()
        indices = batch_indices(step, len(data), cfg.batch_size, seed)
        if objective == "dpo":
            denominator = float(len(indices))
        else:
            denominator = normaliser(norm, len(indices), completion_tokens(data, indices))
        denominator /= eng.world_size()  # DeepSpeed averages gradients over ranks
        local = _rank_slice(indices, data)
        lr = ds_engine.get_lr()[0]
        sums = {"loss": 0.0, "tokens": 0.0}
        for m in range(0, len(local), cfg.micro_batch_size):
            micro = local[m : m + cfg.micro_batch_size]
            batch = {k: v.to(ds_engine.device) for k, v in collate(example_sequences(data, micro), pad).items()}
            logps = sequence_logps(ds_engine, batch)
            if objective == "dpo":
                idx = torch.tensor(micro)
                loss, stats = dpo_loss(logps[0::2], logps[1::2], ref[0][idx], ref[1][idx], beta, denominator)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v.sum().item() / len(local)
            else:
                w = torch.tensor([weights[i] for i in micro], dtype=torch.float32)
                loss = weighted_nll(logps, w, denominator)
            ds_engine.backward(loss, scale_wrt_gas=False)
            if own_clip and m + cfg.micro_batch_size >= len(local):  # boundary: grads are reduced
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            ds_engine.step()
            sums["loss"] += loss.item()
            sums["tokens"] += float(batch["attention_mask"].sum())
        elapsed = time.perf_counter() - started
        tokens = sums.pop("tokens")
        metrics = _reduce(sums)
        if not own_clip:
            grad_norm = ds_engine.get_global_grad_norm()
        metrics.update(lr=lr, tokens=tokens * eng.world_size(), step_s=elapsed,
                       tokens_per_s=tokens * eng.world_size() / elapsed, epoch=(step + 1) * cfg.batch_size / len(data))
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        history.append(metrics)
        done = step + 1
        if run is not None and eng.rank() == 0 and (done % engine_cfg.log_every_steps == 0 or done == total):
            run.log_metrics(metrics, step=done)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
        bar.update(1)
        if done in job.ckpt_steps and done != total:
            _export_checkpoint(job, done)
        if done % engine_cfg.resume_every_steps == 0 and done != total:
            resume.save_resume(ds_engine, job.resume_path, done, job.meta, job.resume_pieces)
        if on_step is not None:
            on_step(done, metrics)
    bar.close()
    return history


def default_config(objective: str) -> TrainConfig:
    """The config class each objective expects, at its defaults."""
    return {"sft": TrainConfig, "dpo": DPOConfig, "weighted_mle": StudentConfig}[objective]()
