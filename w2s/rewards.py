"""Gold rewards: they play the human labeller (paper §9.1) and score policies for PGR (§9.5).

`SummaryFactsReward` — the programmatic reward of the embedded task, for a response y to a post
with key facts F (who, problem, duration, question) and filler sentences:

    r(x, y) = 4·coverage − 2·copied_filler − 2·repetition − 1·overlength − 1·[y empty]

* coverage      = mean over the 4 facts of the fraction of the fact's content words present in y
                  (soft recall; the facts are what a good TL;DR must carry);
* copied_filler = fraction of y's word trigrams that occur in the post's filler sentences
                  (copying irrelevant text, the weak teacher's failure in the EVE paper's tables 1–3);
* repetition    = fraction of y's word trigrams that repeat an earlier trigram of y (rambling loops);
* overlength    = max(0, n_words(y) − L)/L with L = 1.5 × the length of the ideal summary.

The ideal summary scores ≈ 4; an empty one −1. `HFClassifierReward` scores with a sequence-
classification reward model (logit 0 of prompt + response) for real data on a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from w2s.config import GoldRewardSpec
from w2s.data.synthetic import FACT_KEYS, content_words, words


class GoldReward(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str], metas: Sequence[str]) -> np.ndarray: ...


def _trigrams(tokens: list[str]) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


def summary_facts_reward(response: str, meta: dict) -> float:
    tokens = words(response)
    if not tokens:
        return -1.0
    present = set(tokens)
    coverage = 0.0
    for key in FACT_KEYS:
        needed = content_words(meta["facts"][key]) or words(meta["facts"][key])
        coverage += sum(w in present for w in needed) / len(needed)
    coverage /= len(FACT_KEYS)
    grams = _trigrams(tokens)
    filler_grams = {g for sentence in meta["filler"] for g in _trigrams(words(sentence))}
    copied = sum(g in filler_grams for g in grams) / len(grams) if grams else 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    repetition = repeats / len(grams) if grams else 0.0
    limit = 1.5 * len(words(meta["ideal"]))
    overlength = max(0.0, len(tokens) - limit) / limit
    return 4.0 * coverage - 2.0 * copied - 2.0 * repetition - 1.0 * overlength


class SummaryFactsReward:
    def score(self, prompts: Sequence[str], responses: Sequence[str], metas: Sequence[str]) -> np.ndarray:
        if not (len(prompts) == len(responses) == len(metas)):
            raise ValueError("prompts, responses and metas must have equal lengths")
        out = np.empty(len(responses), dtype=np.float64)
        for i, (response, meta) in enumerate(zip(responses, metas)):
            parsed = json.loads(meta) if meta else {}
            if "facts" not in parsed:
                raise ValueError(f"row {i}: summary_facts reward needs task meta with facts (is data.source synthetic?)")
            out[i] = summary_facts_reward(response, parsed)
        return out


class HFClassifierReward:
    def __init__(self, path: str, batch_size: int = 16, device: str = "cpu", dtype=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype or torch.float32, trust_remote_code=False)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.batch_size, self.device = batch_size, device

    def score(self, prompts: Sequence[str], responses: Sequence[str], metas: Sequence[str] | None = None) -> np.ndarray:
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [p + r for p, r in zip(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
            with self.torch.no_grad():
                logits = self.model(**batch).logits
            scores.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)


def load_gold_reward(spec: GoldRewardSpec, device: str = "cpu") -> GoldReward:
    if spec.kind == "summary_facts":
        return SummaryFactsReward()
    from w2s.precision import torch_dtype

    return HFClassifierReward(spec.path, spec.batch_size, device, torch_dtype(spec.precision))
