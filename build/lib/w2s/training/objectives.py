"""Training objectives: sft, weighted_mle (EVE, paper §4.3) and dpo.

Sequence log-prob. log π(y|x) = Σ_t log π(y_t | x, y_<t), a SUM over the completion's tokens
(prompt and padding are masked), as in the paper's objective and as the scoring stage computes it.

weighted_mle. The paper maximises E[F_i · log π_θ(y_i|x)]; over a global optimiser batch B of
sequences the loss we minimise is

    sequence_mean:  L = -Σ_{i∈B} F_i · log π_θ(y_i|x) / |B|
    token_mean:     L = -Σ_{i∈B} F_i · log π_θ(y_i|x) / Σ_{i∈B} n_i     (n_i = completion tokens)

sequence_mean is the paper's Monte-Carlo estimate (F has mean 1 per prompt, so |B| ≈ Σ F_i);
token_mean keeps the step size independent of completion length, like standard SFT. Both
denominators count every sequence of the batch, including rows with F_i = 0: such a row contributes
nothing to the numerator and so no gradient, but it was a draw from π_ref_strong and still counts
in the estimate's sample size. The denominator is computed over the whole GLOBAL batch before it is
split into micro-batches (and ranks), so gradients do not depend on micro_batch_size.

sft is weighted_mle with every F_i = 1 under the same normalisation: the same function runs both,
so the two are equal by construction (and tests check it end to end).

dpo. Standard DPO (Rafailov et al. 2023): with z = β[(log π_θ(y_w|x) − log π_ref(y_w|x)) −
(log π_θ(y_l|x) − log π_ref(y_l|x))], L = mean over pairs of −log σ(z). Reference log-probs are
computed once before training (`reference_logps`) and never recomputed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from w2s.training.data import IGNORE

Objective = Literal["sft", "weighted_mle", "dpo"]
OBJECTIVES: tuple[str, ...] = ("sft", "weighted_mle", "dpo")


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) sums of completion-token log-probs; prompt and padding positions contribute 0.

    Batches are left-padded (data.collate), so completions end at the right edge: the LM head runs
    only on the last `keep` positions, which covers every label. With TL;DR-length prompts and a
    large vocabulary that is most of the head's cost (2× faster steps for the 4-layer weak model).
    """
    labels = batch["labels"]
    labelled = (labels != IGNORE).any(dim=0).nonzero()
    keep = labels.size(1) - int(labelled.min()) + 1 if len(labelled) else 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch.get("position_ids"), use_cache=False, logits_to_keep=keep).logits
    return token_logps_sum(logits, labels[:, labels.size(1) - logits.size(1) :])


def token_logps_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # position t predicts token t+1; cross_entropy(ignore_index) avoids materialising a full
    # log_softmax copy of the (B, T, V) logits, the memory peak of a training step
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return -nll.view(targets.shape).sum(dim=1)


def normaliser(normalisation: str, n_sequences: int, n_completion_tokens: int) -> float:
    """The loss denominator of a global batch (module docstring)."""
    if normalisation == "sequence_mean":
        return float(n_sequences)
    if normalisation == "token_mean":
        return float(n_completion_tokens)
    raise ValueError(f"unknown normalisation {normalisation!r}; expected sequence_mean or token_mean")


def weighted_nll(seq_logps: torch.Tensor, weights: torch.Tensor, denominator: float) -> torch.Tensor:
    """-Σ F_i·log π(y_i|x) / denominator over this micro-batch's rows (sft: F = 1)."""
    return -(weights.to(seq_logps) * seq_logps).sum() / denominator


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    denominator: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ over this micro-batch's pairs of −log σ(z), / denominator (the global pair count).

    Returns the loss and per-pair detached tensors: implicit rewards β(log π − log π_ref) of chosen
    and rejected, and whether chosen's reward is the larger (reward accuracy).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen.to(policy_chosen))
    rejected_reward = beta * (policy_rejected - ref_rejected.to(policy_rejected))
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).sum() / denominator
    stats = {
        "reward_chosen": chosen_reward.detach(),
        "reward_rejected": rejected_reward.detach(),
        "reward_margin": margin.detach(),
        "reward_accuracy": (margin.detach() > 0).float(),
    }
    return loss, stats
