"""An independent training loop for the trajectory-parity tests (no tests here).

Written from the objectives' definitions, not from w2s/training: plain transformers + torch AdamW,
right-padded full-sequence forwards, log_softmax + gather, the whole global batch in one backward.
Its bf16 mode is the field's (TRL's and HF Trainer's `bf16=True`): fp32 weights, the forward under
torch.autocast. Only the batch order is shared with the trainer — `batch_indices`, the data-order
contract (a pure function of seed and step) — because comparing trajectories needs the same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from w2s.training.data import batch_indices


@dataclass
class Schedule:
    lr: float
    warmup: int
    total: int

    def at(self, step: int) -> float:
        """Linear warm-up to the peak, then cosine to 0 at `total`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _encode(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[: len(prompt_ids)] == prompt_ids  # the byte-level test tokenizer never merges across
    return ids, len(prompt_ids)


def sequence_logps(model, encoded: list[tuple[list[int], int]], bf16: bool) -> torch.Tensor:
    """Σ over completion tokens of log π(y_t | x, y_<t), right padding, every position's logits."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.zeros(len(encoded), width, dtype=torch.long)
    attention = torch.zeros(len(encoded), width, dtype=torch.long)
    completion = torch.zeros(len(encoded), width, dtype=torch.bool)
    for row, (ids, n_prompt) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        completion[row, n_prompt : len(ids)] = True
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=input_ids, attention_mask=attention).logits
    logp = torch.log_softmax(logits.float()[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * completion[:, 1:]).sum(dim=1)


def train_reference(model_dir, objective: str, rows: dict, *, steps: int, batch: int, schedule: Schedule,
                    beta: float = 0.1, bf16: bool = False, seed: int = 0) -> list[dict[str, float]]:
    """Per step: the loss of the global batch before the update, the same batch's loss under the
    initial weights (`loss_at_start`: the difference is what training changed), and for dpo its mean
    reward margin."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if objective == "dpo":
        chosen = [_encode(tokenizer, p, c) for p, c in zip(rows["prompt"], rows["chosen"])]
        rejected = [_encode(tokenizer, p, r) for p, r in zip(rows["prompt"], rows["rejected"])]
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logps(model, chosen, bf16), sequence_logps(model, rejected, bf16)
    else:
        examples = [_encode(tokenizer, p, c) for p, c in zip(rows["prompt"], rows["completion"])]
        weights = torch.tensor(rows.get("weight", [1.0] * len(examples)), dtype=torch.float32)
    def batch_loss(idx):
        if objective == "dpo":
            policy = sequence_logps(model, [chosen[i] for i in idx] + [rejected[i] for i in idx], bf16)
            margin = beta * ((policy[: len(idx)] - ref_chosen[idx]) - (policy[len(idx):] - ref_rejected[idx]))
            return -F.logsigmoid(margin).mean(), {"reward_margin": margin.mean().item()}
        logps = sequence_logps(model, [examples[i] for i in idx], bf16)
        w = torch.ones(len(idx)) if objective == "sft" else weights[idx]
        n_tokens = sum(len(examples[i][0]) - examples[i][1] for i in idx)  # token_mean
        return -(w * logps).sum() / n_tokens, {}

    order = [batch_indices(step, len(rows["prompt"]), batch, seed) for step in range(steps)]
    with torch.no_grad():  # each step's batch under the initial weights: what the steps before it changed
        initial = [batch_loss(idx)[0].item() for idx in order]
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    history = []
    for step, idx in enumerate(order):
        for group in optimizer.param_groups:
            group["lr"] = schedule.at(step)
        optimizer.zero_grad()
        loss, record = batch_loss(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append({"loss": loss.item(), "loss_at_start": initial[step], **record})
    return history
