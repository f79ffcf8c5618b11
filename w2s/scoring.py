"""Sequence log-probs of sampled completions under the weak models (EVE stage 4).

log π(y|x) is the SUM over the completion's tokens of log p(token | x, earlier tokens), computed on the
*text*: x (the plain task prompt, not the few-shot prompt) and y are re-tokenised with the weak
model's tokenizer, so weak and strong vocabularies may differ.

Boundary rule: tokenise x alone and x + y; the completion's tokens are x + y's tokens after the
longest common prefix with x's tokens. A token that straddles the boundary (a BPE merge across it)
therefore counts as a completion token, and every completion token is scored in the context the
weak model would see for the full text. A completion that ended (finish_reason 'stop': EOS or a
stop string) gets the weak tokenizer's EOS appended, exactly as the trainer appends it when the
student learns y, so log π(y|x) includes the probability of stopping there; one cut at max_tokens
('length') does not. An empty completion that stopped is thus scored by its EOS alone.

Truncation to the model's context (`max_length`): the prompt loses tokens from its left end first
(the task instruction "TL;DR:" at its end is kept); only a completion that alone exceeds the context
loses its tail. Rows touched are flagged `truncated`; `n_tokens_weak` counts the tokens scored.

Speed: the K completions of a prompt share it, so each batch runs the prompts once (right-padded,
`use_cache`) and the K completions on top of their prompt's KV cache, expanded K-fold; prompts are
bucketed by length under a token budget. Both weak models score the same tokenised batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ScoredGroup:
    """Rows of one prompt after tokenisation (ids never include padding)."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    truncated: list[bool]


def split_completion(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
    common = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        common += 1
    return full_ids[:common], full_ids[common:]


def tokenise_group(tokenizer, prompt: str, completions: list[str], max_length: int, ended: list[bool] | None = None) -> ScoredGroup:
    splits = [split_completion(tokenizer, prompt, c) for c in completions]
    # Prompt tokens shared by every completion (a straddling merge can shorten one of them).
    shared = min(len(p) for p, _ in splits)
    prompt_ids = splits[0][0][:shared]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    completion_ids = [p[shared:] + c + (eos if ended and ended[i] else []) for i, (p, c) in enumerate(splits)]
    longest = max((len(c) for c in completion_ids), default=0)
    truncated = [False] * len(completions)
    if shared + longest > max_length:
        keep_prompt = max(1, max_length - longest)
        if keep_prompt < shared:
            prompt_ids = prompt_ids[shared - keep_prompt :]
        room = max_length - len(prompt_ids)
        truncated = [len(prompt_ids) < shared or len(c) > room for c in completion_ids]
        completion_ids = [c[:room] for c in completion_ids]
    return ScoredGroup(prompt_ids, completion_ids, truncated)


def length_buckets(groups: list[ScoredGroup], batch_tokens: int) -> list[list[int]]:
    """Indices of groups per batch: sorted by length, each batch's padded size under the budget."""
    order = sorted(range(len(groups)), key=lambda i: (len(groups[i].prompt_ids), max(map(len, groups[i].completion_ids))))
    batches, current, lp, lc, rows = [], [], 0, 0, 0
    for i in order:
        g = groups[i]
        new_lp, new_lc = max(lp, len(g.prompt_ids)), max(lc, max(map(len, g.completion_ids)) or 1)
        new_rows = rows + len(g.completion_ids)
        cost = (len(current) + 1) * new_lp + new_rows * (new_lp + new_lc)
        if current and cost > batch_tokens:
            batches.append(current)
            current, lp, lc, rows = [], 0, 0, 0
            new_lp, new_lc, new_rows = len(g.prompt_ids), max(map(len, g.completion_ids)) or 1, len(g.completion_ids)
        current.append(i)
        lp, lc, rows = new_lp, new_lc, new_rows
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def score_batch(models: list, groups: list[ScoredGroup], pad_id: int, device: str = "cpu") -> list[list[list[float]]]:
    """Per model, per group, the summed completion log-prob of each row."""
    n_prompts = len(groups)
    lp = max(len(g.prompt_ids) for g in groups)
    lc = max(1, max(len(c) for g in groups for c in g.completion_ids))
    prompt = torch.full((n_prompts, lp), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n_prompts, lp), dtype=torch.long)
    owners, rows, row_mask = [], [], []
    for gi, g in enumerate(groups):
        prompt[gi, : len(g.prompt_ids)] = torch.tensor(g.prompt_ids)
        prompt_mask[gi, : len(g.prompt_ids)] = 1
        for ids in g.completion_ids:
            owners.append(gi)
            rows.append(ids + [pad_id] * (lc - len(ids)))
            row_mask.append([1] * len(ids) + [0] * (lc - len(ids)))
    owner = torch.tensor(owners)
    completion = torch.tensor(rows, dtype=torch.long)
    completion_mask = torch.tensor(row_mask, dtype=torch.long)
    prompt_len = prompt_mask.sum(1)
    positions = prompt_len[owner, None] + torch.arange(lc)[None, :]
    results = []
    for model in models:
        # Only each prompt's last position feeds a score: skip the LM head everywhere else.
        keep, slot = torch.unique(prompt_len - 1, return_inverse=True)
        out = model(input_ids=prompt.to(device), attention_mask=prompt_mask.to(device), use_cache=True,
                    logits_to_keep=keep.to(device))
        last_logits = out.logits[torch.arange(n_prompts), slot.to(device)]  # predicts completion token 0
        cache = out.past_key_values
        cache.reorder_cache(owner.to(device))  # row r reuses its prompt's KV: index-select, no recompute
        attention = torch.cat([prompt_mask[owner], completion_mask], dim=1).to(device)
        logits = model(input_ids=completion.to(device), attention_mask=attention, position_ids=positions.to(device),
                       past_key_values=cache, use_cache=False).logits
        # token t of the completion is predicted by position t-1; token 0 by the prompt's last position
        predictive = torch.cat([last_logits[owner].unsqueeze(1), logits[:, :-1]], dim=1).float()
        token_logp = predictive.log_softmax(-1).gather(-1, completion.to(device).unsqueeze(-1)).squeeze(-1)
        sums = (token_logp * completion_mask.to(device)).sum(1).cpu().tolist()
        per_group = [[] for _ in groups]
        for gi, value in zip(owners, sums):
            per_group[gi].append(value)
        results.append(per_group)
    return results


@torch.no_grad()
def score_one(model, tokenizer, prompt: str, completion: str, max_length: int, ended: bool = False) -> float:
    """Reference path: one full forward pass per sample (tests and the naive side of bench/scoring.py)."""
    group = tokenise_group(tokenizer, prompt, [completion], max_length, [ended])
    ids = torch.tensor([group.prompt_ids + group.completion_ids[0]])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(token_logp[len(group.prompt_ids) - 1 :].sum())
