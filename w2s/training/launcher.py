"""Several ranks: `train` re-runs itself under the `deepspeed` launcher (one process per rank).

The parent writes the call as JSON (configs, paths, the MLflow run id), runs
`<this python> -m deepspeed.launcher.launch --world_info=<localhost: 0..N-1> --master_addr=127.0.0.1
--master_port=P --module w2s.training.rank <spec>` (DeepSpeed's per-node launcher of the environment
running w2s, not whatever `deepspeed` is on PATH) and waits (with `engines.training.nodes > 1`, a Kubernetes Job of that many pods instead:
w2s/training/multinode.py); each rank (w2s/training/rank.py) calls `train` with LOCAL_RANK set by the
launcher, and rank 0 writes `train_result.json`, which the parent returns. A Table given as ref_logps is written to Parquet for the children.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from w2s.config import TrainConfig, TrainingEngineConfig
from w2s.files import TMP_PREFIX
from w2s.training.rendezvous import RENDEZVOUS_ENV, rendezvous_value

SHARED_MEMORY = Path("/dev/shm")
REF_LOGPS_INPUT = f"{TMP_PREFIX}ref_logps.input.parquet"  # hidden: a copy of an input, never the artifact's


def _config_class(dotted: str) -> type[TrainConfig]:
    """The stage's own TrainConfig subclass (any section: naive_sft, dpo_weak_reward, ...)."""
    import importlib

    module, _, name = dotted.partition(":")
    if not module.startswith("w2s."):
        raise ValueError(f"launch spec names config class {dotted!r} outside the w2s package")
    found = getattr(importlib.import_module(module), name, None)
    if not (isinstance(found, type) and issubclass(found, TrainConfig)):
        raise ValueError(f"launch spec: {dotted!r} is not a TrainConfig")
    return found



def write_spec(cfg, engine: TrainingEngineConfig, objective, model_dir, data_files, out_dir, run, ref_logps, resume_dir, seed) -> Path:
    """The call every rank makes, as `<out_dir>/launch_spec.json` (one node or several)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ref_logps is not None and not isinstance(ref_logps, (str, Path)):
        import pyarrow.parquet as pq

        pq.write_table(ref_logps, out / REF_LOGPS_INPUT)
        ref_logps = out / REF_LOGPS_INPUT
    spec = {
        "config_class": f"{type(cfg).__module__}:{type(cfg).__qualname__}", "config": json.loads(cfg.model_dump_json()),
        "engine": json.loads(engine.model_dump_json()), "objective": objective, "model_dir": str(model_dir),
        "data_files": [str(f) for f in data_files], "out_dir": str(out), "seed": seed,
        "ref_logps": str(ref_logps) if ref_logps else None, "resume_dir": str(resume_dir) if resume_dir else None,
        "mlflow": [run.client.tracking_uri, run.run_id] if run is not None else None,
    }
    spec_path = out / "launch_spec.json"
    spec_path.write_text(json.dumps(spec))
    return spec_path


def release_allreduce_buffers(port: int, folder: Path = SHARED_MEMORY) -> list[str]:
    """Removes the shared-memory all-reduce buffers DeepSpeed's CPU backend made for the ranks of the
    run on `port` (`deepspeed_allreduce_buffer_<n>_<addr>_<port>_<rank>`, 66 MB each): it does not
    unlink them when its ranks exit, so every 2-rank CPU run left 132 MB of RAM behind, until a
    long-lived machine ran out (136 of them, 9 GB, OOM-killed a run here). Buffers of other runs,
    on other ports, are left alone."""
    removed = []
    for buffer in folder.glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        if buffer.name.split("_")[-2] == str(port):
            buffer.unlink(missing_ok=True)
            removed.append(buffer.name)
    return removed


def rank_env() -> dict[str, str]:
    """This environment for rank processes, without the single-process defaults it may have set."""
    from w2s.training.engine import LAUNCHED_MARK, SINGLE_PROCESS_MARK

    own = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", SINGLE_PROCESS_MARK, RENDEZVOUS_ENV}
    return {k: v for k, v in os.environ.items() if k not in own} | {LAUNCHED_MARK: "1"}


def local_launch_command(world_size: int, port: int, spec_path: Path) -> list[str]:
    """DeepSpeed's per-node launcher, called directly rather than through `deepspeed.launcher.runner`:
    for one node the runner only works out the same world_info and then starts this launcher, at the
    price of one more process that imports DeepSpeed (≈ 7 s here, per training stage); and it reads
    /job/hostfile when one exists, which would turn a pod's local run into an ssh launch. Slots
    0..N-1, as `--num_gpus N` picked."""
    import base64

    world_info = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(world_size))}).encode()).decode()
    return [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "--module", "w2s.training.rank", str(spec_path)]


def launch(cfg, engine: TrainingEngineConfig, objective, model_dir, data_files, out_dir, run, ref_logps, resume_dir, seed) -> dict:
    out = Path(out_dir)
    spec_path = write_spec(cfg, engine, objective, model_dir, data_files, out_dir, run, ref_logps, resume_dir, seed)
    if engine.nodes > 1:
        from w2s.training.multinode import run_job

        run_job(spec_path, engine)
    else:
        import shutil

        from w2s.training.engine import _free_port

        port = _free_port()  # DeepSpeed's launcher wants one; the ranks meet through the file store
        command = local_launch_command(engine.world_size, port, spec_path)
        meet = rendezvous_value(port)
        try:
            completed = subprocess.run(command, env=rank_env() | {RENDEZVOUS_ENV: meet})
        finally:
            release_allreduce_buffers(port)
            shutil.rmtree(Path(meet.partition(":")[2]).parent, ignore_errors=True)
        if completed.returncode != 0:
            raise RuntimeError(f"deepspeed launcher exited with {completed.returncode}: {' '.join(command)}")
    spec_path.unlink(missing_ok=True)
    (out / REF_LOGPS_INPUT).unlink(missing_ok=True)
    return json.loads((out / "train_result.json").read_text())  # TrainResult.to_json() of rank 0
