"""One rank of a multi-rank run: `python -m w2s.training.rank <spec>`, started by the DeepSpeed
launcher for each rank (w2s/training/launcher.py writes the spec). Its own module so the launcher
never imports the trainer that imports it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from w2s.config import TrainingEngineConfig
from w2s.training.launcher import _config_class
from w2s.training.trainer import train


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    run = None
    if spec["mlflow"]:
        from mlflow.tracking import MlflowClient

        from w2s.tracking import StageRun

        run = StageRun(MlflowClient(tracking_uri=spec["mlflow"][0]), spec["mlflow"][1])
    train(_config_class(spec["config_class"])(**spec["config"]), TrainingEngineConfig(**spec["engine"]), spec["objective"],
          spec["model_dir"], spec["data_files"], spec["out_dir"], run=run, ref_logps=spec["ref_logps"],
          resume_dir=spec["resume_dir"], seed=spec["seed"])


if __name__ == "__main__":
    # DeepSpeed's launcher also passes --local_rank=N (LOCAL_RANK is in the environment too)
    main(next(arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")))
