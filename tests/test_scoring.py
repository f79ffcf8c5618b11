"""Scoring: batched + KV-reused log-probs equal per-sample full forwards; tokenizers may differ."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import shard_artifact
from w2s.config import ScoringConfig
from w2s.models.build import load_pretrained
from w2s.scoring import plan_packs, score_groups, score_one, split_completion, tokenise_group
from w2s.stage import Stage, StageOutput, execute

PROMPTS = [
    "SUBREDDIT: r/relationships\nTITLE: Need advice\nPOST: I (24F) My roommate never cleans the kitchen. I had a long day.\nTL;DR:",
    "SUBREDDIT: r/AskReddit\nPOST: short one\nTL;DR:",
    "SUBREDDIT: r/legaladvice\nTITLE: landlord\nPOST: My landlord uses my car without asking, for three months now. Weather is bad.\nTL;DR:",
]
COMPLETIONS = [
    [" roommate never cleans the kitchen", " kitchen", " I had a long day, a long long day", ""],
    [" short", " one short one", " s", " TL;DR: repeat"],
    [" landlord uses my car", " car", " three months of bad weather", " what do I do?"],
]


def _samples_table(prompt_ids=None):
    rows = []
    for p, (prompt, completions) in enumerate(zip(PROMPTS, COMPLETIONS)):
        for k, completion in enumerate(completions):
            rows.append({"prompt_id": f"student-{p}", "sample_idx": k, "prompt": prompt, "fewshot_prompt": "EX\n" + prompt,
                         "completion": completion, "n_tokens": 5, "finish_reason": "length" if k == 1 else "stop", "seed": k})
    return pa.Table.from_pylist(rows)


def _model_artifact(ctx, name, folder):
    import shutil

    def body(writer, run):
        with writer.folder("model") as target:
            shutil.copytree(folder, target, dirs_exist_ok=True)
        return StageOutput({})

    return execute(ctx, Stage(name, 1), ScoringConfig(), {}, body)


def _perturbed_copy(folder, target, seed):
    model, tokenizer = load_pretrained(folder)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.mark.parametrize("fixture", ["tiny_char_model_dir", "tiny_smollm_model_dir"])
def test_stage_scores_equal_per_sample_forward(ctx, tmp_path, request, fixture):
    """Byte-level and BPE weak tokenizers score the same text (the strong one never matters)."""
    from tasks.scoring import scoring

    base = request.getfixturevalue(fixture)
    weak_dir = _perturbed_copy(base, tmp_path / "weak", seed=1)
    weak = _model_artifact(ctx, "weak_dpo", weak_dir)
    weak_ref = _model_artifact(ctx, "weak_sft", base)
    table = _samples_table()
    samples = shard_artifact(ctx, "sampling", [table.slice(0, 8), table.slice(8)])
    ref = scoring.run(ctx, ScoringConfig(batch_tokens=400), samples, weak, weak_ref)
    out = pa.concat_tables([pq.read_table(ref.local_dir() / f"shards/part-{i:05d}.parquet") for i in range(2)])
    assert out.column_names == table.column_names + ["logp_weak", "logp_weak_ref", "n_tokens_weak", "truncated"]
    weak_model, tokenizer = load_pretrained(weak_dir)
    ref_model, _ = load_pretrained(base)
    for row in out.to_pylist():
        ended = row["finish_reason"] == "stop"
        expected_weak = score_one(weak_model, tokenizer, row["prompt"], row["completion"], 4096, ended)
        expected_ref = score_one(ref_model, tokenizer, row["prompt"], row["completion"], 4096, ended)
        assert row["logp_weak"] == pytest.approx(expected_weak, abs=1e-4)
        assert row["logp_weak_ref"] == pytest.approx(expected_ref, abs=1e-4)
        assert row["n_tokens_weak"] == len(split_completion(tokenizer, row["prompt"], row["completion"])[1]) + ended
        assert not row["truncated"]
    assert not np.allclose(out.column("logp_weak").to_numpy(), out.column("logp_weak_ref").to_numpy())


def test_packed_rows_never_see_their_siblings(tiny_char_model_dir):
    """Packs split mid-group, duplicate, empty and EOS-only completions: each row scores like its own pass."""
    model, tokenizer = load_pretrained(tiny_char_model_dir)
    completions = [" roommate", " roommate", "", "", " kitchen never cleaned", " k"]
    ended = [True, True, False, True, False, True]
    groups = [tokenise_group(tokenizer, PROMPTS[0], completions, 4096, ended),
              tokenise_group(tokenizer, PROMPTS[1], COMPLETIONS[1], 4096)]
    pack_tokens = len(groups[0].prompt_ids) + 25
    assert len(plan_packs(groups, pack_tokens)) > len(groups)  # the first group spans several packs
    scores = score_groups([model], groups, tokenizer.pad_token_id, batch_tokens=300, pack_tokens=pack_tokens)[0]
    expected = [[score_one(model, tokenizer, PROMPTS[0], c, 4096, e) for c, e in zip(completions, ended)],
                [score_one(model, tokenizer, PROMPTS[1], c, 4096) for c in COMPLETIONS[1]]]
    assert np.allclose(scores[0], expected[0], atol=1e-4) and np.allclose(scores[1], expected[1], atol=1e-4)
    assert scores[0][2] == 0.0 and scores[0][3] < 0  # nothing to score vs the EOS alone


def test_score_one_is_an_independent_sum_of_token_logprobs(tiny_char_model_dir):
    model, tokenizer = load_pretrained(tiny_char_model_dir)
    prompt, completion = PROMPTS[1], " abc"
    ids = tokenizer(prompt + completion)["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    manual = sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(n_prompt, len(ids)))
    assert score_one(model, tokenizer, prompt, completion, 4096) == pytest.approx(manual, abs=1e-4)


def test_boundary_rule_gives_straddling_tokens_to_the_completion(tiny_smollm_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_smollm_model_dir)
    prompt, completion = "the kitc", "hen is dirty"  # BPE merges "kitchen" across the boundary
    prompt_part, completion_part = split_completion(tokenizer, prompt, completion)
    assert tokenizer.decode(prompt_part + completion_part) == prompt + completion
    assert len(prompt_part) < len(tokenizer(prompt)["input_ids"])  # the straddling token moved over
    assert tokenizer.decode(completion_part).endswith(completion)


def test_truncation_keeps_the_prompt_end_and_flags_rows(tiny_char_model_dir):
    model, tokenizer = load_pretrained(tiny_char_model_dir)
    group = tokenise_group(tokenizer, PROMPTS[0], COMPLETIONS[0], max_length=60)
    longest = max(len(c) for c in group.completion_ids)
    assert len(group.prompt_ids) + longest <= 60 and all(group.truncated)
    assert tokenizer.decode(group.prompt_ids).endswith("TL;DR:")
    assert group.completion_ids[0] == tokenise_group(tokenizer, PROMPTS[0], COMPLETIONS[0], 4096).completion_ids[0]
    tail = tokenise_group(tokenizer, "x", ["y" * 50], max_length=20)
    assert len(tail.completion_ids[0]) == 19 and tail.truncated == [True]


def test_killed_scoring_resumes_from_finished_shards(ctx, tmp_path, tiny_char_model_dir, monkeypatch):
    import tasks.scoring as stage

    weak = _model_artifact(ctx, "weak_dpo", _perturbed_copy(tiny_char_model_dir, tmp_path / "w", 3))
    weak_ref = _model_artifact(ctx, "weak_sft", tiny_char_model_dir)
    table = _samples_table()
    samples = shard_artifact(ctx, "sampling", [table.slice(0, 4), table.slice(4, 4), table.slice(8)])
    real, calls = stage.score_table, []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "score_table", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        stage.scoring.run(ctx, ScoringConfig(), samples, weak, weak_ref)
    key = stage.scoring.key(ScoringConfig(), {"samples": samples, "weak": weak, "weak_ref": weak_ref})
    first_shard = os.path.join(ctx.artifact_root, "scoring", key, "shards", "part-00000.parquet")
    before = os.stat(first_shard)
    monkeypatch.setattr(stage, "score_table", real)
    calls.clear()
    ref = stage.scoring.run(ctx, ScoringConfig(), samples, weak, weak_ref)
    after = os.stat(first_shard)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not rewritten
    assert ref.rows == table.num_rows


def test_score_rows_equals_per_row_score_one(tiny_char_model_dir):
    from w2s.models.build import load_pretrained
    from w2s.scoring import score_one, score_rows

    prompts = ["Post: a cat sat\nTL;DR:", "Post: dogs bark at night, loudly\nTL;DR:", "x"]
    completions = [" cat sat", " dogs bark", ""]
    ended = [True, False, True]
    model, tokenizer = load_pretrained(tiny_char_model_dir)
    expected = [score_one(model, tokenizer, p, c, model.config.max_position_embeddings, e) for p, c, e in zip(prompts, completions, ended)]
    assert score_rows(tiny_char_model_dir, prompts, completions, ended, batch_tokens=64) == pytest.approx(expected, abs=1e-4)
