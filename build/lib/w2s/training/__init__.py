"""The training engine: one DeepSpeed trainer for sft, dpo and weighted_mle (EVE).

Stage code calls `train(...)` from inside a stage body with the stage's `StageWriter.dir` (or a
folder in it) as `out_dir`; see trainer.py for what is written there and objectives.py for the
exact losses and their normalisation.
"""

from w2s.training.data import DataError
from w2s.training.reference import compute_reference_logps
from w2s.training.trainer import Checkpoint, TrainResult, train

__all__ = ["Checkpoint", "DataError", "TrainResult", "compute_reference_logps", "train"]
