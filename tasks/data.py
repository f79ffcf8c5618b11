"""Stage `data`: the task's gold-labelled preferences and disjoint prompt splits (w2s/data/splits.py).

    w2s run --config pipeline_config.yaml --until data

Real preferences (data.source: hf) are relabelled by the gold reward model as §9.1 says
(w2s/data/gold_labels.py) unless data.hf.gold_labels is false; the synthetic task is labelled by
its programmatic gold reward when it is made.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from w2s.config import DataConfig, GoldRewardSpec, PipelineConfig
from w2s.data.splits import build_tables, validate_preferences
from w2s.devices import torch_device
from w2s.stage import Body, StageOutput, stage
from w2s.tracking import RunContext


class DataSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data: DataConfig
    gold_reward: GoldRewardSpec | None = None  # set when the gold RM relabels real preferences (§9.1)

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> DataSlice:
        relabel = config.data.source == "hf" and config.data.hf.gold_labels
        return cls(data=config.data, gold_reward=config.models.gold_reward if relabel else None)


# 2: real preferences relabelled by the gold reward model (§9.1)
@stage(version=2, reads=DataSlice.from_pipeline)
def data(ctx: RunContext, cfg: DataSlice) -> Body:
    def body(writer, run) -> StageOutput:
        tables = build_tables(cfg.data)
        metrics = {}
        if cfg.gold_reward is not None:
            from w2s.data.gold_labels import gold_relabel
            from w2s.rewards import load_gold_reward

            reward = load_gold_reward(cfg.gold_reward, torch_device(ctx.device))
            tables["preferences"], metrics = gold_relabel(tables["preferences"], reward, cfg.data.seed)
        validate_preferences(tables["preferences"], "data/preferences")
        for split, table in tables.items():
            writer.write_parquet(f"{split}.parquet", table)
        prefs = tables["preferences"]
        chosen_words = sum(len(t.split()) for t in prefs.column("chosen").to_pylist()) / prefs.num_rows
        return StageOutput({f"rows_{split}": t.num_rows for split, t in tables.items()} | {"chosen_words_mean": chosen_words, **metrics})

    return body
