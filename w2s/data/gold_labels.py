"""§9.1: the gold reward model plays the human. Each pair (x, y1, y2) is relabelled with

    p(y1 ≻ y2 | x) = σ(r_gold(x, y1) − r_gold(x, y2)),

y1 chosen with probability p by a seeded draw per row, so D_golden follows the gold reward the
policies are later scored by, not the dataset's human labels. The unordered pair is unchanged.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def gold_relabel(table: pa.Table, reward, seed: int) -> tuple[pa.Table, dict[str, float]]:
    prompts = table.column("prompt").to_pylist()
    first, second = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    metas = table.column("meta").to_pylist()
    margin = np.asarray(reward.score(prompts, first, metas), np.float64) - np.asarray(reward.score(prompts, second, metas), np.float64)
    if not np.all(np.isfinite(margin)):
        raise ValueError("the gold reward gave a non-finite score to a preference pair")
    p_first = 1.0 / (1.0 + np.exp(-margin))
    keep = np.random.default_rng([seed, 91]).random(len(prompts)) < p_first  # 91: §9.1's own stream
    chosen = [a if k else b for a, b, k in zip(first, second, keep)]
    rejected = [b if k else a for a, b, k in zip(first, second, keep)]
    relabelled = table.set_column(table.schema.get_field_index("chosen"), "chosen", pa.array(chosen, pa.string()))
    relabelled = relabelled.set_column(table.schema.get_field_index("rejected"), "rejected", pa.array(rejected, pa.string()))
    stats = {
        "gold_agrees_with_human": float(np.mean(keep)),  # fraction of pairs whose label did not change
        "gold_prefers_human_choice": float(np.mean(margin > 0)),  # the RM's own accuracy on the human labels
        "gold_margin_abs_mean": float(np.mean(np.abs(margin))),
    }
    return relabelled, stats
