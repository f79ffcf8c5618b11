"""Stage `data`: the task's gold-labelled preferences and disjoint prompt splits (w2s/data/splits.py).

    w2s run --config pipeline_config.yaml --until data
"""

from __future__ import annotations

from w2s.config import DataConfig
from w2s.data.splits import build_tables, validate_preferences
from w2s.stage import Body, StageOutput, stage
from w2s.tracking import RunContext


@stage(version=1, reads=lambda config: config.data)
def data(ctx: RunContext, cfg: DataConfig) -> Body:
    def body(writer, run) -> StageOutput:
        tables = build_tables(cfg)
        validate_preferences(tables["preferences"], "data/preferences")
        for split, table in tables.items():
            writer.write_parquet(f"{split}.parquet", table)
        prefs = tables["preferences"]
        chosen_words = sum(len(t.split()) for t in prefs.column("chosen").to_pylist()) / prefs.num_rows
        return StageOutput({f"rows_{split}": t.num_rows for split, t in tables.items()} | {"chosen_words_mean": chosen_words})

    return body
