"""The text contract (w2s/text.py): data in the CarperAI comparisons schema comes out of ingest as
canonical (x, y); the few-shot prompt, the trainer and the scorer all read the same strings and cut
them at the same token boundary, also when a BPE merge straddles it (issue #16, E2 and E7)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from w2s.config import DataConfig, TrainConfig
from w2s.data.splits import build_tables
from w2s.generation.prompts import fewshot_prompt
from w2s.models.build import load_pretrained
from w2s.scoring import score_groups, split_completion, tokenise_group
from w2s.training.data import load_data

CARPER_PROMPT = "SUBREDDIT: r/AskReddit\nTITLE: Title {i}\nPOST: Something happened to me {i} times."


def _carper_rows(n: int) -> list[dict]:
    # The schema of CarperAI/openai_summarize_comparisons: prompt without the instruction,
    # chosen/rejected starting with "TL;DR: ".
    return [{"prompt": CARPER_PROMPT.format(i=i), "chosen": f"TL;DR: it happened {i} times",
             "rejected": f"TL;DR: something {i}"} for i in range(n)]


def test_carperai_rows_become_canonical_x_and_y(tmp_path):
    pq.write_table(pa.Table.from_pylist(_carper_rows(40)), tmp_path / "train.parquet")
    cfg = DataConfig(source="hf", n_preference=20, n_weak_demo=5, n_exemplar_pool=2, n_student=5, n_test=5,
                     hf={"path": "parquet", "data_files": str(tmp_path / "train.parquet")})
    tables = build_tables(cfg)
    prefs = tables["preferences"].to_pylist()
    for row in prefs:
        assert row["prompt"].endswith("times.\nTL;DR:"), row["prompt"]
        assert row["chosen"].startswith(" it happened") and "TL;DR" not in row["chosen"]
        assert row["rejected"].startswith(" something") and "TL;DR" not in row["rejected"]
    for split in ("weak_demo", "exemplar", "student", "test"):
        assert all(p.endswith("\nTL;DR:") for p in tables[split].column("prompt").to_pylist()), split
    # An exemplar reads exactly as its row does, and the query is the row's x: no doubled "TL;DR:".
    (a, b), query = [(r["prompt"], r["chosen"]) for r in prefs[:2]], prefs[2]["prompt"]
    assert fewshot_prompt("tldr", [a, b], query) == f"{a[0]}{a[1]}\n\n{b[0]}{b[1]}\n\n{query}"
    assert "TL;DR: TL;DR:" not in fewshot_prompt("tldr", [a, b], query)

    verbatim = cfg.model_copy(update={"hf": cfg.hf.model_copy(update={"text_format": "verbatim"})})
    assert build_tables(verbatim)["preferences"].column("chosen").to_pylist()[0].startswith("TL;DR: ")


def test_trainer_and_scorer_cut_at_the_same_boundary_when_a_merge_straddles_it(tmp_path, tiny_smollm_model_dir):
    model, tokenizer = load_pretrained(tiny_smollm_model_dir)
    prompt = "the kitc"  # BPE merges "kitchen" across the boundary for the first completion only
    completions = ["hen is dirty", " is clean"]
    assert len(split_completion(tokenizer, prompt, completions[0])[0]) < len(tokenizer(prompt)["input_ids"])
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": [prompt] * 2, "completion": completions}), path)
    data = load_data([path], "completion", tokenizer, TrainConfig(append_eos=False, batch_size=2, micro_batch_size=2), None)
    for seq, completion in zip(data.sequences, completions):
        head, tail = split_completion(tokenizer, prompt, completion)
        assert seq.ids == head + tail and seq.n_prompt == len(head)

    # The scorer packs both rows behind their shared prompt tokens; each row's sum must still start
    # at its own boundary. Independent check: one plain forward pass over each full text.
    group = tokenise_group(tokenizer, prompt, completions, 4096)
    packed = score_groups([model.eval()], [group], tokenizer.pad_token_id, 4096)[0][0]
    for value, seq in zip(packed, data.sequences):
        with torch.no_grad():
            logp = model(torch.tensor([seq.ids])).logits[0].float().log_softmax(-1)
        expected = sum(logp[t - 1, seq.ids[t]].item() for t in range(seq.n_prompt, len(seq.ids)))
        assert abs(value - expected) < 1e-3, (value, expected)
    assert [group.scored_tokens(k) for k in range(2)] == [s.n_completion for s in data.sequences]
