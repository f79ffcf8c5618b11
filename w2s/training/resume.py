"""Training resume state: a DeepSpeed checkpoint, our RNG state and a pointer, sealed, read back
only as data.

Seals (w2s/partial.py) catch damage and a replaced file, but not a writer of the artifact root,
who can rewrite a seal beside the file. So the state is also loaded in a way that cannot run code:
DeepSpeed's own loader is `torch.load(weights_only=False)`, full pickle; here its checkpoint
engine loads with `weights_only=True`, which builds only tensors, containers and the few
DeepSpeed classes its ZeRO states hold (`STATE_CLASSES`). Before that, each state file's pickle is
listed without being run (`torch.serialization.get_unsafe_globals_in_checkpoint`); a file naming
anything else is discarded like a damaged one and training starts over, so a planted payload
costs the resumed steps, never an execution.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from w2s.partial import PartialFiles
from w2s.training.engine import barrier, on_gpu, rank, rank0_decides

RESUME_POINTER = "resume.json"
RNG_FILE = "trainer_rng.safetensors"
# What DeepSpeed 0.19's ZeRO-1/2/3 optimiser states pickle besides tensors and containers (a ZeRO-0
# state holds none): an enum, the loss scaler's plain attributes, a dataclass of two ints.
STATE_CLASSES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

log = logging.getLogger(__name__)


def save_resume(engine, resume_dir: Path, step: int, meta: dict, pieces: PartialFiles) -> None:
    """DeepSpeed checkpoint + our RNG state, sealed; then (atomically, sealed) the pointer naming
    them. A kill at any moment leaves the pointer naming a complete, sealed checkpoint; older
    checkpoints are discarded only after the pointer moved on."""
    from safetensors.torch import save_file

    from w2s.artifacts import atomic_write_bytes

    tag = f"step-{step:07d}"
    engine.save_checkpoint(str(resume_dir), tag=tag, save_latest=False)
    barrier()  # every rank's shards are written before rank 0 seals the folder
    if rank() == 0:
        rng = {"torch": torch.get_rng_state()}
        if on_gpu():
            rng["cuda"] = torch.cuda.get_rng_state()
        tmp = resume_dir / tag / f".tmp-{RNG_FILE}"
        save_file(rng, str(tmp))
        os.replace(tmp, resume_dir / tag / RNG_FILE)
        pieces.seal(resume_dir / tag)
        atomic_write_bytes(resume_dir / RESUME_POINTER, json.dumps({"tag": tag, "step": step, **meta}).encode())
        pieces.seal(resume_dir / RESUME_POINTER)
        for old in resume_dir.glob("step-*"):
            if old.name != tag:
                pieces.discard(old)
    barrier()


def foreign_objects(folder: Path) -> list[str]:
    """What the state files in `folder` would build beyond tensors, containers and STATE_CLASSES,
    read from their pickles without running them."""
    found = []
    for path in sorted(folder.rglob("*.pt")):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as exc:  # not a zip checkpoint, or damaged: nothing to trust
            names = [f"unreadable ({type(exc).__name__})"]
        found += [f"{path.name}: {name}" for name in names if name not in STATE_CLASSES]
    return found


def _verified_pointer(resume_dir: Path, pieces: PartialFiles) -> bool:
    if not pieces.reuse(resume_dir / RESUME_POINTER):
        return False
    try:
        tag = json.loads((resume_dir / RESUME_POINTER).read_text())["tag"]
    except (ValueError, KeyError, TypeError):
        return False
    if not (isinstance(tag, str) and re.fullmatch(r"step-\d{7}", tag) and pieces.reuse(resume_dir / tag)):
        return False
    foreign = foreign_objects(resume_dir / tag)
    if foreign:
        log.warning("%s would construct %s on loading, which no DeepSpeed state holds", resume_dir / tag, "; ".join(foreign[:3]))
    return not foreign


def read_resume(resume_dir: Path, pieces: PartialFiles) -> dict | None:
    """The pointer of a resume state whose every file matches its seal and holds only data;
    anything else is discarded (logged) and None returned, so training starts over."""
    def check() -> bool:
        if not (resume_dir.exists() or pieces.seal_path(resume_dir / RESUME_POINTER).exists()) and pieces.mirror is None:
            return False
        if _verified_pointer(resume_dir, pieces):
            return True
        if resume_dir.exists():
            log.warning("%s does not match its seals or holds more than data: discarded, training starts over", resume_dir)
        discard_resume(resume_dir, pieces)
        return False

    if not rank0_decides(check):
        return None
    return json.loads((resume_dir / RESUME_POINTER).read_text())


def discard_resume(resume_dir: Path, pieces: PartialFiles) -> None:
    if rank() == 0:
        pieces.discard(resume_dir)


def _state_classes() -> list[type]:
    return [getattr(importlib.import_module(module), name) for module, name in (c.rsplit(".", 1) for c in STATE_CLASSES)]


def load_without_code(path: str, map_location=None):
    """DeepSpeed's checkpoint-engine `load`, as data only (module docstring)."""
    with torch.serialization.safe_globals(_state_classes()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_resume(engine, resume_dir: Path, pointer: dict) -> None:
    """Loads the state `read_resume` verified, through `load_without_code`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from safetensors.torch import load_file

    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:  # another engine would load its own way
        raise RuntimeError(f"resume needs DeepSpeed's torch checkpoint engine, not {type(engine.checkpoint_engine).__name__}")
    engine.checkpoint_engine.load = load_without_code
    path, _ = engine.load_checkpoint(str(resume_dir), tag=pointer["tag"])
    if path is None:
        raise RuntimeError(f"could not load DeepSpeed checkpoint {resume_dir / pointer['tag']}")
    rng = load_file(str(resume_dir / pointer["tag"] / RNG_FILE))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and on_gpu():
        torch.cuda.set_rng_state(rng["cuda"])
