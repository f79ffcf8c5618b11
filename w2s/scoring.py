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

Speed: the K completions of a prompt share it, so the prompt and its K completions are packed into
one sequence under a block-diagonal mask (`score_packs`): one forward pass scores all K, the prompt is
computed once and no KV cache is copied K-fold. The LM head (28 M of SmolLM2-135M's 135 M weights)
runs only on the positions that predict a completion token (each distinct one once), in chunks, so
the full-vocabulary log-softmax never covers a prompt or padding position. Packs are bucketed by
length under a token budget; both weak models score the same tokenised batch. Against a per-sample
forward pass: bench/scoring.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from w2s.text import completion_start


@dataclass
class ScoredGroup:
    """Rows of one prompt after tokenisation (ids never include padding)."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    truncated: list[bool]
    # Leading tokens of completion_ids[k] that are row k's own prompt tokens: fed (the shared prefix
    # ends where the shortest common prefix of the K rows ends) but not summed, so each row's score
    # starts at its own boundary (w2s/text.py), the one training masks at.
    context: list[int]

    def scored_tokens(self, k: int) -> int:
        return len(self.completion_ids[k]) - self.context[k]


def split_completion(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
    common = completion_start(prompt_ids, full_ids)
    return full_ids[:common], full_ids[common:]


def tokenise_group(tokenizer, prompt: str, completions: list[str], max_length: int, ended: list[bool] | None = None) -> ScoredGroup:
    splits = [split_completion(tokenizer, prompt, c) for c in completions]
    # Prompt tokens shared by every completion (a straddling merge can shorten one of them).
    shared = min(len(p) for p, _ in splits)
    prompt_ids = splits[0][0][:shared]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    completion_ids = [p[shared:] + c + (eos if ended and ended[i] else []) for i, (p, c) in enumerate(splits)]
    context = [len(p) - shared for p, _ in splits]
    longest = max((len(c) for c in completion_ids), default=0)
    truncated = [False] * len(completions)
    if shared + longest > max_length:
        keep_prompt = max(1, max_length - longest)
        if keep_prompt < shared:
            prompt_ids = prompt_ids[shared - keep_prompt :]
        room = max_length - len(prompt_ids)
        truncated = [len(prompt_ids) < shared or len(c) > room for c in completion_ids]
        completion_ids = [c[:room] for c in completion_ids]
        context = [min(n, len(c)) for n, c in zip(context, completion_ids)]
    return ScoredGroup(prompt_ids, completion_ids, truncated, context)


PACK_TOKENS = 2048  # most tokens in one packed sequence: bounds its L×L mask; more completions start a new pack
HEAD_CHUNK = 512  # positions per LM-head matmul: bounds the fp32 (positions × vocab) logits block


@dataclass
class Pack:
    """One prompt and some of its completions, packed into one sequence (`length` tokens fed)."""

    group: int
    rows: list[int]
    length: int


def plan_packs(groups: list[ScoredGroup], max_tokens: int = PACK_TOKENS) -> list[Pack]:
    """All K completions of a prompt share one sequence unless that would exceed `max_tokens`.

    A completion's last token is scored but never fed (it predicts nothing)."""
    packs = []
    for gi, g in enumerate(groups):
        if not g.prompt_ids:
            raise ValueError("scoring needs at least one prompt token to predict the first completion token")
        rows, length = [], len(g.prompt_ids)
        for k, ids in enumerate(g.completion_ids):
            fed = max(len(ids) - 1, 0)
            if rows and length + fed > max_tokens:
                packs.append(Pack(gi, rows, length))
                rows, length = [], len(g.prompt_ids)
            rows.append(k)
            length += fed
        packs.append(Pack(gi, rows, length))
    return packs


def length_buckets(packs: list[Pack], batch_tokens: int) -> list[list[Pack]]:
    """Packs sorted by length, each batch's padded size (rows × longest) under the budget."""
    batches, current = [], []
    for pack in sorted(packs, key=lambda p: p.length):
        if current and (len(current) + 1) * pack.length > batch_tokens:
            batches.append(current)
            current = []
        current.append(pack)
    if current:
        batches.append(current)
    return batches


def score_groups(models: list, groups: list[ScoredGroup], pad_id: int, batch_tokens: int, device: str = "cpu",
                 progress=None, pack_tokens: int = PACK_TOKENS) -> list[list[list[float]]]:
    """Per model, per group, the summed completion log-prob of each row."""
    out = [[[0.0] * len(g.completion_ids) for g in groups] for _ in models]
    for batch in length_buckets(plan_packs(groups, pack_tokens), batch_tokens):
        values = score_packs(models, groups, batch, pad_id, device)
        for m, per_model in enumerate(values):
            slots = ((pack.group, k) for pack in batch for k in pack.rows)
            for (gi, k), value in zip(slots, per_model):
                out[m][gi][k] = value
        if progress is not None:
            progress.update(sum(len(pack.rows) for pack in batch))
    return out


@torch.inference_mode()
def score_packs(models: list, groups: list[ScoredGroup], packs: list[Pack], pad_id: int, device: str = "cpu") -> list[list[float]]:
    """Per model, the summed log-prob of each row of `packs` (in pack order): one forward pass per model.

    Each packed sequence is the prompt, then its completions back to back. A block-diagonal causal mask
    lets a completion token see the prompt and its own earlier tokens, never a sibling, and its position
    ids restart where the prompt ends, so every token sees exactly what it would in prompt + completion
    alone. The LM head runs only on the positions that predict a completion token."""
    n, width = len(packs), max(p.length for p in packs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # 0 prompt, s ≥ 1 the s-th completion, -1 padding
    source, target, owner = [], [], []  # flat position predicting each scored token, the token, its row
    row = 0
    for b, pack in enumerate(packs):
        g = groups[pack.group]
        prompt_len = len(g.prompt_ids)
        seq, seg, pos = list(g.prompt_ids), [0] * prompt_len, list(range(prompt_len))
        for s, k in enumerate(pack.rows, start=1):
            c = g.completion_ids[k]
            if c:  # token 0 is predicted by the prompt's last position, token t by fed token t - 1
                predicting = [b * width + prompt_len - 1] + list(range(b * width + len(seq), b * width + len(seq) + len(c) - 1))
                skip = g.context[k]  # the row's own prompt tokens: fed below, never scored
                source += predicting[skip:]
                target += c[skip:]
                owner += [row] * (len(c) - skip)
                seq += c[:-1]
                seg += [s] * (len(c) - 1)
                pos += range(prompt_len, prompt_len + len(c) - 1)
            row += 1
        ids[b, : len(seq)] = torch.tensor(seq)
        positions[b, : len(pos)] = torch.tensor(pos)
        segment[b, : len(seg)] = torch.tensor(seg)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = (causal & ((key == 0) | (key == query)))[:, None]  # padding sees padding: no empty softmax row
    # Each distinct predicting position goes through the LM head once (the prompt's last one serves all K).
    where, slot = torch.unique(torch.tensor(source, dtype=torch.long), return_inverse=True)
    target_t, owner_t = torch.tensor(target, dtype=torch.long), torch.tensor(owner, dtype=torch.long)
    results = []
    for model in models:
        _check_plain_head(model)
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  position_ids=positions.to(device), use_cache=False).last_hidden_state
        hidden = hidden.reshape(n * width, -1)[where.to(device)]
        token_logp = torch.empty(len(target), dtype=torch.float32)
        head = model.get_output_embeddings()
        for lo in range(0, len(where), HEAD_CHUNK):
            logp = head(hidden[lo : lo + HEAD_CHUNK]).float().log_softmax(-1)  # rounds as a per-sample pass does
            picked = ((slot >= lo) & (slot < lo + HEAD_CHUNK)).nonzero().squeeze(1)
            token_logp[picked] = logp[(slot[picked] - lo).to(device), target_t[picked].to(device)].cpu()
        sums = torch.zeros(row, dtype=torch.float64).index_add_(0, owner_t, token_logp.double())
        results.append(sums.tolist())
    return results


def _check_plain_head(model) -> None:
    """The LM head is applied by hand, so a model that rescales logits after it would be scored wrong."""
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise NotImplementedError(f"scoring applies the LM head itself; {config.model_type} rescales its logits")


@torch.no_grad()
def score_one(model, tokenizer, prompt: str, completion: str, max_length: int, ended: bool = False) -> float:
    """Reference path: one full forward pass per sample (tests and the naive side of bench/scoring.py)."""
    group = tokenise_group(tokenizer, prompt, [completion], max_length, [ended])
    ids = torch.tensor([group.prompt_ids + group.completion_ids[0]])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(token_logp[len(group.prompt_ids) - 1 + group.context[0] :].sum())


def score_rows(model_dir, prompts: list[str], completions: list[str], ended: list[bool], batch_tokens: int = 4096,
               label: str = "", precision: str = "fp32", device: str = "cpu") -> list[float]:
    """log π(y|x) of independent (x, y) rows under the model folder `model_dir` (its own tokenizer,
    the boundary and EOS rules above), batched like the scoring stage: each row is a group of one.
    Evaluation (KL) and the strong-as-evaluator baseline use it."""
    from tqdm.auto import tqdm

    from w2s.models.build import load_pretrained
    from w2s.precision import torch_dtype

    model, tokenizer = load_pretrained(model_dir, dtype=torch_dtype(precision), device=device)
    model.eval()
    max_length = model.config.max_position_embeddings
    groups = [tokenise_group(tokenizer, p, [c], max_length, [e]) for p, c, e in zip(prompts, completions, ended)]
    with tqdm(total=len(groups), desc=f"log-probs {label}".strip(), unit="row", leave=False) as progress:
        scores = score_groups([model], groups, tokenizer.pad_token_id, batch_tokens, device, progress=progress)
    return [row[0] for row in scores[0]]
