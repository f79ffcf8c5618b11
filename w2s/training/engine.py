"""DeepSpeed plumbing: process environment, the ZeRO config, the engine, HF export (resume state: resume.py).

The ZeRO JSONs in configs/deepspeed/ hold only what is ZeRO-specific (stage, buckets, overlap);
everything the run determines (batch sizes, accumulation, optimiser, clipping, precision) is filled
in here from TrainConfig so the two can never disagree. Traps from DESIGN.md handled here:
DS_ACCELERATOR must be set before deepspeed is first imported; one CPU process still needs
RANK/WORLD_SIZE/MASTER_* for the gloo group; `torch_adam` avoids a 90 s cpu_adam JIT build; the shm
op DeepSpeed JIT-builds on first use is cached under TORCH_EXTENSIONS_DIR (default below).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import uuid
from pathlib import Path

import torch

from w2s.config import TrainConfig, TrainingEngineConfig
from w2s.config.presets import DEEPSPEED_TEMPLATES


def on_gpu() -> bool:
    return torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SINGLE_PROCESS_MARK = "W2S_SINGLE_PROCESS_PID"


def setup_environment() -> None:
    """Single-process defaults; the `deepspeed` launcher sets these itself for multi-GPU runs."""
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "w2s" / "torch_extensions"))
    # Defaults a parent process set for *itself* (e.g. pytest training in-process, then running the
    # CLI as a child) are inherited but wrong here: its port is taken. The marker tells them apart
    # from a real launcher's environment.
    if not in_launcher() and os.environ.get(SINGLE_PROCESS_MARK) != str(os.getpid()):
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ[SINGLE_PROCESS_MARK] = str(os.getpid())
        # a port of our own: another process (a test's subprocess, a colleague) may hold a fixed one
        if not torch.distributed.is_initialized():
            os.environ["MASTER_PORT"] = str(_free_port())
            from w2s.training.rendezvous import RENDEZVOUS_ENV, rendezvous_value

            os.environ[RENDEZVOUS_ENV] = rendezvous_value(int(os.environ["MASTER_PORT"]))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


LAUNCHED_MARK = "W2S_LAUNCHED_RANK"  # set by w2s/training/launcher.py for the ranks it starts


def in_launcher() -> bool:
    """True in a rank a launcher started: ours (marked), or another one (torchrun, a cluster's)
    that set LOCAL_RANK itself. False in a process whose LOCAL_RANK are single-process defaults,
    its own or inherited from a parent that trained (they carry SINGLE_PROCESS_MARK)."""
    if os.environ.get(LAUNCHED_MARK) == "1":
        return True
    return "LOCAL_RANK" in os.environ and SINGLE_PROCESS_MARK not in os.environ


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def precision(engine_cfg: TrainingEngineConfig) -> str:
    from w2s.precision import resolve

    return resolve(engine_cfg.precision)


def deepspeed_config(cfg: TrainConfig, engine_cfg: TrainingEngineConfig, world: int) -> dict:
    path = Path(engine_cfg.deepspeed_config) if engine_cfg.deepspeed_config else DEEPSPEED_TEMPLATES / f"zero{engine_cfg.zero_stage}.json"
    if not path.exists() and not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path  # relative to the repository, wherever we run from
    if not path.exists():
        raise FileNotFoundError(f"DeepSpeed config {path} not found")
    ds = json.loads(path.read_text())
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage != engine_cfg.zero_stage:
        raise ValueError(f"{path} has ZeRO stage {stage} but engines.training.zero_stage is {engine_cfg.zero_stage}")
    per_step = cfg.micro_batch_size * world
    if cfg.batch_size % per_step:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size × world_size = {per_step}")
    ds.update(
        train_batch_size=cfg.batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // per_step,
        gradient_clipping=cfg.grad_clip,
        optimizer={
            "type": "AdamW",
            # torch's AdamW: no JIT build on CPU; on GPU its foreach kernels are close to FusedAdam.
            # foreach is torch's default on GPU only; on CPU it makes the step ~2x faster too
            "params": {"lr": cfg.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8,
                       "weight_decay": cfg.weight_decay, "torch_adam": True, "foreach": True},
        },
    )
    # bf16 is autocast over fp32 weights (TRL's and HF Trainer's bf16), not DeepSpeed's bf16 module:
    # a bf16 module's fp32 masters start *on* the bf16 grid (DeepSpeed builds them from the module),
    # so the forward ignored every update until a weight's updates summed past half a bf16 step, and
    # DPO's reward margin stayed at noise for steps where fp32 and TRL learned
    # (docs/results/bf16-dynamics.md). Autocast rounds the fp32 weights afresh at every forward: off
    # the grid, a small update moves the rounded weight with probability ∝ its size, as fp32 does on
    # average (prepare_model moves a bf16 checkpoint's weights off the grid); norms, embeddings, the
    # loss and the optimiser stay fp32.
    bf16 = precision(engine_cfg) == "bf16"
    ds["bf16"] = {"enabled": False}
    ds["fp16"] = {"enabled": False}
    ds["torch_autocast"] = {"enabled": bf16, "dtype": "bfloat16"}
    if trainer_clips(ds):
        # DeepSpeed clips plain fp32 ZeRO-0 gradients but drops the norm it computed; the trainer
        # clips instead (same torch call, same cost) so grad_norm can be logged
        ds["gradient_clipping"] = 0.0
    return ds


def trainer_clips(ds: dict) -> bool:
    """ZeRO-0 trains plain fp32 weights in both precisions (bf16 is autocast): the trainer clips them, to log the norm."""
    return ds["zero_optimization"].get("stage", 0) == 0


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """`warmup_steps`, capped at `max_warmup_fraction` of the run (the peak is always reached)."""
    return min(cfg.warmup_steps, int(cfg.max_warmup_fraction * total_steps))


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warmup to the peak over the capped warm-up, then cosine to 0 at `total_steps` (or constant)."""
    warmup = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def dither_off_the_bf16_grid(model, seed: int = 0) -> int:
    """Moves each bf16-exact weight of a Linear layer by a random amount inside its own bf16 rounding
    interval; returns how many moved. The bf16 forward under autocast reads exactly the same weights
    as before (each still rounds to its old value), but the fp32 values now sit anywhere in their
    interval, so a small update flips the rounding with probability ∝ its size, as it does for a
    checkpoint that was never bf16 (SmolLM2's GGUF: 21 % of weights bf16-exact). Without it, a bf16
    checkpoint (the paper's Llama) has every weight on the grid and the forward ignores all updates
    until their sum passes half a step: DPO's margin reached 0.07 where fp32 reached 0.45 after 8
    steps at 1e-5 (docs/results/bf16-dynamics.md). Embeddings are read in fp32 and stay as they are
    (a tied LM head with them)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    moved = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, torch.nn.Linear) or weight is None or id(weight) in embeddings or weight.dtype != torch.float32:
                continue
            exact = (weight == weight.bfloat16().float()) & (weight != 0)
            magnitude = weight.abs()
            # bf16 keeps 8 significant bits: the step above |w| is 2^(e-7), below it the same, or half at a power of 2
            exponent = torch.floor(torch.log2(torch.where(exact, magnitude, torch.ones_like(magnitude))))
            up = torch.exp2(exponent - 8)
            down = torch.where(magnitude == torch.exp2(exponent), up / 2, up)
            u = torch.rand(weight.shape, generator=generator)
            offset = 0.98 * (u * (up + down) - down)  # inside (−down, +up): strictly within the rounding interval
            weight.add_(torch.where(exact, torch.sign(weight) * offset, torch.zeros_like(weight)))
            moved += int(exact.sum())
    return moved


def prepare_model(model, cfg: TrainConfig, engine_cfg: TrainingEngineConfig):
    """Gradient checkpointing and LoRA before DeepSpeed wraps the model; bf16 weights off the grid."""
    if precision(engine_cfg) == "bf16":
        moved = dither_off_the_bf16_grid(model)
        logging.getLogger(__name__).info("bf16: %d bf16-exact Linear weights dithered inside their rounding interval", moved)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        if engine_cfg.zero_stage == 3:
            raise ValueError("LoRA with ZeRO-3 is not supported (export merges adapters); use zero_stage <= 2")
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms and biases are not decayed."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in trainable if p.ndim >= 2]
    rest = [p for _, p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def initialize(model, cfg: TrainConfig, engine_cfg: TrainingEngineConfig, total_steps: int):
    """(engine, ds_config). The LR schedule is a torch LambdaLR so DeepSpeed checkpoints it."""
    setup_environment()
    import deepspeed

    from w2s.training.rendezvous import rendezvous_store

    store = rendezvous_store()
    meet = {"init_method": f"file://{store}", "rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"])} if store else {}
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo", **meet)
    ds = deepspeed_config(cfg, engine_cfg, world_size())
    # the optimiser must exist for the scheduler, so DeepSpeed builds it and we attach the schedule
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.weight_decay), config=ds,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps)),
    )
    if world_size() == 1 and engine.zero_optimization_stage() == 0:
        # one process has nothing to reduce, yet DeepSpeed would flatten every gradient into
        # buckets, "all-reduce" them with itself and copy them back each step (~10 % on CPU)
        engine.enable_backward_allreduce = False
    return engine, ds


# ------------------------------------------------------------------------------------ HF export
def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def _declared_dtype(model, engine):
    """The weights are saved as the fp32 values the optimiser updated, while the config declares the
    format the model was trained to run in: bf16 under autocast, so vLLM samples it in bf16 as it
    was trained (w2s/precision.sampled_precision) and KL is scored in that format."""
    if not engine.torch_autocast_enabled():
        yield
        return
    before = model.config.dtype
    model.config.dtype = torch.bfloat16
    try:
        yield
    finally:
        model.config.dtype = before


def export_hf(engine, tokenizer, folder: Path, cfg: TrainConfig, base_model_dir: Path) -> None:
    """The current weights as an HF folder (safetensors + tokenizer), renamed into place when whole.

    ZeRO-3 gathers the partitioned weights layer by layer (every rank must call this); LoRA
    adapters are merged into a fresh copy of the base model so downstream stages load a plain model.
    """
    zero3 = engine.zero_optimization_stage() == 3
    state = engine._zero3_consolidated_16bit_state_dict() if zero3 else None
    if rank() != 0:
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}.{uuid.uuid4().hex[:8]}")
    module = engine.module
    if cfg.lora.enabled:
        from peft import get_peft_model

        from w2s.models.build import load_pretrained

        base, _ = load_pretrained(base_model_dir, dtype=next(module.parameters()).dtype)
        fresh = get_peft_model(base, module.peft_config["default"])
        fresh.load_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()})
        merged = fresh.merge_and_unload()
        with _declared_dtype(merged, engine):
            merged.save_pretrained(tmp, safe_serialization=True)
    else:
        if state is None:
            state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        with _declared_dtype(module, engine):
            module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, folder)


# ---------------------------------------------------------------------------------- ranks agree
def rank0_decides(decide) -> bool:
    """`decide()` on rank 0 (it may discard files), its answer on every rank."""
    answer = [bool(decide()) if rank() == 0 else None]
    if world_size() > 1:
        torch.distributed.broadcast_object_list(answer, src=0)
    return bool(answer[0])


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
