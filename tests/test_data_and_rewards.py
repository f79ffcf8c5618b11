"""The embedded task, its gold reward (against hand computation) and the real-data loader."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from w2s.config import DataConfig, GoldRewardSpec
from w2s.data.splits import PROMPT_SPLITS, build_tables, validate_preferences
from w2s.rewards import SummaryFactsReward, load_gold_reward, summary_facts_reward

META = {
    "facts": {"who": "my roommate", "problem": "never cleans the kitchen", "duration": "for two weeks", "question": "should I move out"},
    "filler": ["The weather here has been terrible all week."],
    "ideal": " my roommate never cleans the kitchen for two weeks, should I move out?",
}


def test_ideal_summary_gets_full_coverage_and_no_penalty():
    assert summary_facts_reward(META["ideal"], META) == pytest.approx(4.0)


def test_reward_matches_hand_computation():
    # words: my roommate never cleans the kitchen the weather here has been terrible (12 words)
    response = " my roommate never cleans the kitchen the weather here has been terrible"
    # coverage: who 1 (roommate), problem 1 (never cleans kitchen), duration 0/2 (two weeks), question 0/2 (should, move, out -> 'should','move','out')
    question_words = ["should", "move", "out"]
    coverage = (1 + 1 + 0 + 0 / len(question_words)) / 4
    tokens = response.split()
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    filler = "the weather here has been terrible all week".split()
    filler_grams = {tuple(filler[i : i + 3]) for i in range(len(filler) - 2)}
    copied = sum(g in filler_grams for g in trigrams) / len(trigrams)
    limit = 1.5 * len(META["ideal"].replace(",", " ").replace("?", " ").split())
    overlength = max(0.0, len(tokens) - limit) / limit
    expected = 4 * coverage - 2 * copied - 0 - overlength
    assert summary_facts_reward(response, META) == pytest.approx(expected)
    assert copied > 0


def test_reward_penalises_the_weak_teachers_failures():
    ideal = summary_facts_reward(META["ideal"], META)
    repeated = summary_facts_reward(META["ideal"] * 3, META)
    copied = summary_facts_reward(" the weather here has been terrible all week", META)
    assert summary_facts_reward("", META) == -1.0
    assert repeated < ideal - 1 and copied < 0


def test_synthetic_splits_are_deterministic_and_disjoint():
    cfg = DataConfig(n_preference=40, n_weak_demo=10, n_exemplar_pool=4, n_student=10, n_test=10)
    first, second = build_tables(cfg), build_tables(cfg)
    assert all(first[s].equals(second[s]) for s in first)
    assert build_tables(cfg.model_copy(update={"seed": 1}))["test"] != first["test"]
    prompts = [p for table in first.values() for p in table.column("prompt").to_pylist()]
    assert len(prompts) == len(set(prompts)) == 74
    assert set(first) == {"preferences", *PROMPT_SPLITS}
    assert all(p.endswith("\nTL;DR:") and p.startswith("SUBREDDIT: r/") for p in prompts)
    validate_preferences(first["preferences"], "prefs")


def test_preference_labels_follow_the_bradley_terry_probability():
    """Paper §9.1: p(y1 ≻ y2) = σ(r1 − r2). The chosen side wins with the predicted frequency."""
    cfg = DataConfig(n_preference=3000, n_weak_demo=1, n_exemplar_pool=2, n_student=1, n_test=1)
    prefs = build_tables(cfg)["preferences"].to_pylist()
    reward = SummaryFactsReward()
    r_chosen = reward.score([r["prompt"] for r in prefs], [r["chosen"] for r in prefs], [r["meta"] for r in prefs])
    r_rejected = reward.score([r["prompt"] for r in prefs], [r["rejected"] for r in prefs], [r["meta"] for r in prefs])
    margin = r_chosen - r_rejected
    # Under the model, E[#(chosen better)] = Σ σ(|Δ|) over pairs with Δ ≠ 0.
    nonzero = margin != 0
    expected = np.sum(1 / (1 + np.exp(-np.abs(margin[nonzero]))))
    observed = np.sum(margin[nonzero] > 0)
    p = 1 / (1 + np.exp(-np.abs(margin[nonzero])))
    std = math.sqrt(float(np.sum(p * (1 - p))))
    assert abs(observed - expected) < 4 * std
    assert observed / nonzero.sum() > 0.6  # gold preferences carry signal a weak teacher can learn


def test_validate_preferences_names_bad_rows():
    table = pa.table({"prompt_id": ["a", "b", "c"], "prompt": ["x"] * 3, "chosen": [" ok", "", " same"],
                      "rejected": [" no", " r", " same"], "meta": ["{}"] * 3})
    with pytest.raises(ValueError, match=r"prefs: rows \[1, 2\]"):
        validate_preferences(table, "prefs")
    with pytest.raises(ValueError, match="missing columns"):
        validate_preferences(table.drop_columns(["rejected"]), "prefs")


def test_hf_loader_reads_local_preference_files(tmp_path):
    rows = [{"prompt": f"POST: story {i}\nTL;DR:", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    cfg = DataConfig(source="hf", n_preference=10, n_weak_demo=5, n_exemplar_pool=2, n_student=5, n_test=5,
                     hf={"path": "parquet", "data_files": str(tmp_path / "prefs.parquet")})
    tables = build_tables(cfg)
    assert tables["preferences"].num_rows == 10 and tables["test"].num_rows == 5
    assert set(tables["preferences"].column_names) == {"prompt_id", "prompt", "chosen", "rejected", "meta"}
    pref = tables["preferences"].to_pylist()[0]
    assert pref["chosen"].replace("good", "bad") == pref["rejected"]
    bad = cfg.model_copy(update={"hf": cfg.hf.model_copy(update={"chosen_column": "better"})})
    with pytest.raises(ValueError, match=r"lacks columns \['better'\]"):
        build_tables(bad)


def test_hf_classifier_gold_reward(tmp_path, tiny_char_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_char_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reward = load_gold_reward(GoldRewardSpec(kind="hf_classifier", path=str(tmp_path / "rm"), batch_size=2))
    prompts, responses = ["a\nTL;DR:", "bb\nTL;DR:", "c\nTL;DR:"], [" x", " a longer one", " z"]
    batched = reward.score(prompts, responses, ["{}"] * 3)
    single = np.concatenate([reward.score([p], [r], ["{}"]) for p, r in zip(prompts, responses)])
    assert batched.shape == (3,) and np.allclose(batched, single, atol=1e-5)  # padding must not change scores


def test_summary_reward_refuses_rows_without_task_meta():
    with pytest.raises(ValueError, match="needs task meta"):
        SummaryFactsReward().score(["p"], [" r"], [json.dumps({})])


@pytest.mark.parametrize("name, content, builder, says", [
    ("bad.jsonl", b'{"prompt": "a\xff\xfe", "chosen": " x", "rejected": " y"}\n', "json", "cannot read"),
    ("empty.jsonl", b"", "json", "cannot read"),
    ("fake.parquet", b"not parquet", "parquet", "cannot read"),
    ("none.parquet", None, "parquet", "cannot read"),
])
def test_hf_loader_names_an_unreadable_or_empty_file_in_one_line(tmp_path, name, content, builder, says):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string()),
                                 "rejected": pa.array([], pa.string())}), path)
    else:
        path.write_bytes(content)
    cfg = DataConfig(source="hf", n_preference=10, n_weak_demo=5, n_exemplar_pool=2, n_student=5, n_test=5,
                     hf={"path": builder, "data_files": str(path)})
    with pytest.raises(ValueError, match=f"^data.hf: .*{says}") as caught:
        build_tables(cfg)
    assert "\n" not in str(caught.value) and name in str(caught.value)


def test_hf_loader_says_when_repeated_prompts_are_used_once(tmp_path, caplog):
    rows = [{"prompt": f"POST: story {i % 25}\nTL;DR:", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    cfg = DataConfig(source="hf", n_preference=10, n_weak_demo=5, n_exemplar_pool=2, n_student=3, n_test=5,
                     hf={"path": "parquet", "data_files": str(tmp_path / "prefs.parquet")})
    with caplog.at_level("WARNING", logger="w2s.data.splits"):
        tables = build_tables(cfg)
    assert "5 of 30 preference rows repeat an earlier prompt" in caplog.text
    assert len(set(tables["preferences"].column("prompt").to_pylist())) == 10
