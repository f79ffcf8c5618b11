"""§9.1 gold relabelling (w2s/data/gold_labels.py): y1 ≻ y2 with probability σ(r1 − r2), checked
against that formula by counting, and at stage level with a real sequence-classification RM."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from w2s.data.gold_labels import gold_relabel


class TableReward:
    """A gold reward given as a table of scores: r(x, y) = scores[y]."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, prompts, responses, metas=None):
        return np.array([self.scores[r] for r in responses])


def _pairs(n: int, margin: float):
    first, second = [f" a{i}" for i in range(n)], [f" b{i}" for i in range(n)]
    scores = {**{a: margin for a in first}, **{b: 0.0 for b in second}}
    table = pa.table({"prompt_id": [f"p{i}" for i in range(n)], "prompt": ["x\nTL;DR:"] * n, "chosen": first,
                      "rejected": second, "meta": ["{}"] * n})
    return table, TableReward(scores)


@pytest.mark.parametrize("margin", [-2.0, 0.0, 1.0, 3.0])
def test_the_first_answer_wins_with_probability_sigmoid_of_the_margin(margin):
    n = 4000
    table, reward = _pairs(n, margin)
    out, stats = gold_relabel(table, reward, seed=5)
    kept = np.mean([c.startswith(" a") for c in out.column("chosen").to_pylist()])
    p = 1 / (1 + np.exp(-margin))
    assert abs(kept - p) < 4 * np.sqrt(p * (1 - p) / n)  # within 4 binomial standard errors
    assert stats["gold_agrees_with_human"] == pytest.approx(kept)
    # the unordered pair never changes
    assert {frozenset(x) for x in zip(out.column("chosen").to_pylist(), out.column("rejected").to_pylist())} == \
        {frozenset(x) for x in zip(table.column("chosen").to_pylist(), table.column("rejected").to_pylist())}


def test_a_decisive_gold_reward_sorts_every_pair_and_the_draw_is_seeded():
    table, _ = _pairs(200, 0.0)
    scores = {f" a{i}": (50.0 if i % 2 else -50.0) for i in range(200)} | {f" b{i}": 0.0 for i in range(200)}
    out, stats = gold_relabel(table, TableReward(scores), seed=0)
    assert out.column("chosen").to_pylist() == [f" a{i}" if i % 2 else f" b{i}" for i in range(200)]
    assert stats["gold_prefers_human_choice"] == 0.5
    again, _ = gold_relabel(table, TableReward({k: 0.0 for k in scores}), seed=3)
    same, _ = gold_relabel(table, TableReward({k: 0.0 for k in scores}), seed=3)
    assert again.equals(same)


def test_data_stage_relabels_real_preferences_with_the_gold_rm(ctx, tmp_path, tiny_char_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from tasks.data import DataSlice, data
    from w2s.config.loading import load_config
    from w2s.rewards import load_gold_reward
    from tests.conftest import REPO

    tokenizer = AutoTokenizer.from_pretrained(tiny_char_model_dir)
    rm_config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(rm_config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    rows = [{"prompt": f"POST: story {i}", "chosen": f"TL;DR: good {i}", "rejected": f"TL;DR: bad {i} " + "x" * (i % 7)}
            for i in range(60)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    sets = ["data={source: hf, n_preference: 40, n_weak_demo: 5, n_exemplar_pool: 2, n_student: 5, n_test: 5, "
            f"hf: {{path: parquet, data_files: {tmp_path / 'prefs.parquet'}}}}}",
            f"models.gold_reward={{kind: hf_classifier, path: {tmp_path / 'rm'}}}"]
    config = load_config(REPO / "configs" / "tiny.yaml", sets)
    cfg = DataSlice.from_pipeline(config)
    assert cfg.gold_reward is not None  # on by default for real data
    ref = data.run(ctx, cfg)
    prefs = pq.read_table(ref.local_dir() / "preferences.parquet").to_pylist()
    reward = load_gold_reward(config.models.gold_reward)
    human = {r["prompt"]: (r["chosen"], r["rejected"]) for r in
             pq.read_table(data.run(ctx, DataSlice(data=config.data)).local_dir() / "preferences.parquet").to_pylist()}
    swapped = 0
    for row in prefs:
        good, bad = human[row["prompt"]]
        assert {row["chosen"], row["rejected"]} == {good, bad}
        swapped += row["chosen"] == bad
    assert 0 < swapped < len(prefs)  # a random RM flips some labels, not all
    margin = reward.score([r["prompt"] for r in prefs], [human[r["prompt"]][0] for r in prefs]) - \
        reward.score([r["prompt"] for r in prefs], [human[r["prompt"]][1] for r in prefs])
    manifest = json.loads((ref.local_dir() / "manifest.json").read_text())
    assert manifest["metrics"]["gold_agrees_with_human"] == pytest.approx(1 - swapped / len(prefs))
    assert manifest["metrics"]["gold_prefers_human_choice"] == pytest.approx(np.mean(margin > 0))
    off = DataSlice.from_pipeline(load_config(REPO / "configs" / "tiny.yaml", [*sets, "data.hf.gold_labels=false"]))
    assert off.gold_reward is None
