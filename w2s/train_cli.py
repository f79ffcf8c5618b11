"""`w2s train`: the project's DeepSpeed trainer on its own, outside any pipeline.

    w2s train weighted_mle --model path/to/hf_model --data shards/*.parquet --out runs/student \\
        --set train.learning_rate=2e-5 --set train.epochs=2 --set engine.precision=bf16
    w2s train sft --model M --data sft.parquet --out runs/sft       # columns prompt, completion
    w2s train dpo --model M --data pairs.parquet --out runs/dpo     # columns prompt, chosen, rejected

Data: Parquet with `prompt, completion` (sft; weighted_mle also reads `weight`, the F of EVE's
eq. 8 — any non-negative per-row weight works) or `prompt, chosen, rejected` (dpo). `--set` takes
`train.<key>` (the objective's section: TrainConfig, StudentConfig or DPOConfig, as
`w2s config show` prints under `student` / `weak_dpo`) and `engine.<key>` (engines.training).
Writes `model/`, `checkpoints/step-*/` and `train_result.json` under `--out`; rerunning the same
command after a kill resumes from the last sealed DeepSpeed state. `--out` records what made its work
(digests of the model folder and data files, the objective, the settings, the seed): another run
into the same folder stops with one line instead of continuing from or mixing in that work, unless
`--fresh` discards it. Nothing here is cached or tracked: the pipeline's stages are (w2s run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from w2s.config import DPOConfig, StudentConfig, TrainConfig, TrainingEngineConfig

SECTIONS = {"sft": TrainConfig, "dpo": DPOConfig, "weighted_mle": StudentConfig}


def command_schema(objective: str) -> type[BaseModel]:
    class TrainCommand(BaseModel):
        model_config = ConfigDict(extra="forbid")
        train: SECTIONS[objective] = SECTIONS[objective]()  # type: ignore[valid-type]
        engine: TrainingEngineConfig = TrainingEngineConfig()
        seed: int = 0

    return TrainCommand


def add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="train a model with sft, dpo or weighted_mle on Parquet data (no pipeline, no cache)",
                            description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("objective", choices=tuple(SECTIONS))
    parser.add_argument("--model", required=True, metavar="DIR", help="a Hugging Face model folder (config, safetensors, tokenizer)")
    parser.add_argument("--data", required=True, nargs="+", metavar="SHARD", help="Parquet file(s), columns as above")
    parser.add_argument("--out", required=True, metavar="DIR", help="where model/ and checkpoints/ go")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the training work --out holds (model, checkpoints, resume state) and start over")
    parser.add_argument("--config", metavar="FILE", help="optional YAML with train:, engine: and seed: sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="train.<key> or engine.<key> or seed, value parsed as YAML: --set train.learning_rate=2e-5")


def run_train(args) -> int:
    """Bad arguments raise ConfigError before any compute (exit 2 in the CLI)."""
    from w2s.config.loading import ConfigError, load_config
    from w2s.precision import resolve

    cfg = load_config(args.config, args.overrides, schema=command_schema(args.objective))
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise ConfigError(f"--model {model}: not a Hugging Face model folder (no config.json)")
    if not any(model.glob("*.safetensors")) and not any(model.glob("pytorch_model*.bin")):
        raise ConfigError(f"--model {model}: no weights (*.safetensors or pytorch_model*.bin)")
    if not any((model / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        raise ConfigError(f"--model {model}: no tokenizer (tokenizer.json, tokenizer_config.json, vocab.json or tokenizer.model)")
    missing = [p for p in args.data if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"--data: no such file {missing[0]}")
    from w2s import faults
    from w2s.training import DataError, train
    from w2s.training.data import read_rows

    engine = cfg.engine.model_copy(update={"precision": resolve(cfg.engine.precision)})
    try:
        read_rows(args.data, "pair" if args.objective == "dpo" else "completion")  # before --out or the model is touched
        claim_out(Path(args.out), run_identity(args.objective, cfg, model, args.data), fresh=args.fresh)
        result = train(cfg.train, engine, args.objective, model, args.data, Path(args.out), seed=cfg.seed,
                       on_step=lambda step, _: faults.checkpoint("train", step))
    except DataError as exc:
        print(f"w2s: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"steps": result.steps, **{k: round(v, 6) for k, v in result.metrics.items()}}))
    print(f"model: {Path(args.out) / 'model'}")
    return 0


IDENTITY = ".w2s-train.json"
# what the trainer leaves under --out that a later run would read or that holds a run's result
TRAINING_WORK = ("model", "checkpoints", ".resume", ".partial", "ref_logps.parquet", "train_result.json")


def run_identity(objective: str, cfg, model: Path, data: list[str]) -> str:
    """sha256 over what decides the training: objective, settings, seed, and the bytes of the model
    folder and of each data file (in order). Precision and world size are included: resume state of
    one layout does not fit another."""
    import hashlib

    from w2s.files import file_digest

    files = {p.relative_to(model).as_posix(): file_digest(p) for p in sorted(model.rglob("*")) if p.is_file()}
    record = {"objective": objective, "settings": json.loads(cfg.model_dump_json()), "model": files,
              "data": [file_digest(Path(p)) for p in data]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def claim_out(out: Path, identity: str, fresh: bool) -> None:
    """`out` is this run's: empty of training work, or holding work of this very identity (a rerun
    after a kill resumes). Another run's work stops the command (exit 2); `fresh` removes any."""
    import shutil

    from w2s.config.loading import ConfigError
    from w2s.files import atomic_write_bytes

    marker = out / IDENTITY
    try:
        recorded = json.loads(marker.read_text()).get("identity")
    except (FileNotFoundError, ValueError, AttributeError):
        recorded = None
    present = [name for name in TRAINING_WORK if (out / name).exists()]
    if present and (fresh or recorded != identity):
        if not fresh:
            whose = "another run's" if recorded else "training work of unknown origin"
            raise ConfigError(f"--out {out} holds {whose} ({', '.join(present)}) made from other model, data or settings: "
                              "choose another --out, or add --fresh to discard it")
        for name in present:
            target = out / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    atomic_write_bytes(marker, json.dumps({"identity": identity}).encode())
