"""Objectives against independent computations: sequence log-probs, DPO closed form, F = 0 rows."""

from __future__ import annotations

import math

import pytest
import torch

from w2s.training.data import Tokenised, collate
from w2s.training.objectives import dpo_loss, normaliser, sequence_logps, weighted_nll


@pytest.fixture(scope="module")
def model_and_tok(tiny_char_model_dir):
    from w2s.models.build import load_pretrained

    model, tok = load_pretrained(tiny_char_model_dir)
    return model.eval(), tok


def _seqs(tok, pairs):
    out = []
    for prompt, completion in pairs:
        p = tok(prompt)["input_ids"]
        out.append(Tokenised(ids=p + tok(completion)["input_ids"] + [tok.eos_token_id], n_prompt=len(p)))
    return out


PAIRS = [("Q: hi", " there"), ("Question: long one", " a much longer answer"), ("Q", " x"), ("Q: mid", " middle")]


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_sequence_logps_match_a_per_sequence_loop(model_and_tok):
    model, tok = model_and_tok
    seqs = _seqs(tok, PAIRS)
    with torch.no_grad():
        batched = sequence_logps(model, collate(seqs, tok.pad_token_id))
        for i, s in enumerate(seqs):
            logits = model(input_ids=torch.tensor([s.ids])).logits[0]  # alone: no padding at all
            logp = torch.log_softmax(logits.double(), dim=-1)
            expected = sum(logp[t - 1, s.ids[t]].item() for t in range(s.n_prompt, len(s.ids)))
            assert batched[i].item() == pytest.approx(expected, abs=1e-3)


def test_dpo_loss_and_gradient_match_closed_form():
    beta, n = 0.1, 5
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(n, generator=gen, dtype=torch.float64) * 20 - 40 for _ in range(4))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    loss, stats = dpo_loss(pc, pr, rc, rr, beta, denominator=n)
    loss.backward()
    z = [beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item() for i in range(n)]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-zi)) for zi in z) / n, rel=1e-12)
    for i, zi in enumerate(z):
        # d/dz of log(1 + e^-z) is -1 / (1 + e^z); dz/dpc = beta, dz/dpr = -beta
        assert pc.grad[i].item() == pytest.approx(-beta / (1 + math.exp(zi)) / n, rel=1e-10)
        assert pr.grad[i].item() == pytest.approx(beta / (1 + math.exp(zi)) / n, rel=1e-10)
    assert stats["reward_accuracy"].tolist() == [float(zi > 0) for zi in z]
    assert stats["reward_margin"].tolist() == pytest.approx(z, rel=1e-10)


def test_zero_weight_row_gives_the_gradient_of_the_row_removed(model_and_tok):
    model, tok = model_and_tok
    seqs = _seqs(tok, PAIRS)
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5])
    keep = [0, 2, 3]
    denominator = 4.0  # fixed: the global batch's, as the trainer computes it before splitting
    with_zero = _grads(model, weighted_nll(sequence_logps(model, collate(seqs, 0)), weights, denominator))
    removed = _grads(model, weighted_nll(sequence_logps(model, collate([seqs[i] for i in keep], 0)), weights[keep], denominator))
    for name in with_zero:
        torch.testing.assert_close(with_zero[name], removed[name], rtol=1e-5, atol=1e-7)
    # and the row does matter when its weight is not zero (the comparison can fail)
    weighted = _grads(model, weighted_nll(sequence_logps(model, collate(seqs, 0)), torch.tensor([1.0, 1.0, 2.0, 0.5]), denominator))
    assert any(not torch.allclose(weighted[n], removed[n], atol=1e-6) for n in weighted)


def test_micro_batches_with_the_global_denominator_sum_to_the_full_batch(model_and_tok):
    model, tok = model_and_tok
    seqs = _seqs(tok, PAIRS)
    weights = torch.tensor([0.3, 1.0, 2.0, 0.7])
    tokens = sum(s.n_completion for s in seqs)
    assert normaliser("token_mean", 4, tokens) == tokens and normaliser("sequence_mean", 4, tokens) == 4
    full = _grads(model, weighted_nll(sequence_logps(model, collate(seqs, 0)), weights, tokens))
    model.zero_grad()
    for part in ([0, 1], [2, 3]):
        weighted_nll(sequence_logps(model, collate([seqs[i] for i in part], 0)), weights[part], tokens).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, full[name], rtol=1e-4, atol=1e-6)


def test_sft_is_weighted_mle_with_unit_weights_and_the_paper_sum():
    logps = torch.tensor([-3.0, -10.0, -1.5])
    # sequence_mean: -Σ_i F_i log π(y_i|x) / B with log π a SUM over tokens (paper §4.3)
    assert weighted_nll(logps, torch.ones(3), 3.0).item() == pytest.approx(14.5 / 3)
    assert weighted_nll(logps, torch.tensor([2.0, 0.0, 1.0]), 3.0).item() == pytest.approx(7.5 / 3)


def _trl_logps(model, seqs) -> torch.Tensor:
    """TRL's path (DPOTrainer.get_batch_logps / SFTTrainer's completion-only loss): each sequence on
    its own, unpadded, labels = ids with the prompt at -100, shifted by one, log-softmax gathered."""
    out = []
    for s in seqs:
        ids = torch.tensor([s.ids])
        labels = ids.clone()
        labels[0, : s.n_prompt] = -100
        logits = model(input_ids=ids).logits[:, :-1, :].float()
        labels = labels[:, 1:]
        mask = labels != -100
        per_token = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
        out.append((per_token * mask).sum())
    return torch.stack(out)


def test_sft_dpo_and_weighted_mle_losses_match_trls_formulas(model_and_tok):
    """Within 1e-5 of TRL's formulas on the same log-probs: DPO's sigmoid loss (label_smoothing 0),
    SFT's completion-only token-mean cross-entropy (our token_mean) and per-sequence weighted NLL."""
    import torch.nn.functional as F

    model, tok = model_and_tok
    seqs = _seqs(tok, PAIRS)
    ours = sequence_logps(model, collate(seqs, 0))
    trl = _trl_logps(model, seqs)
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-5)

    n_tokens = sum(s.n_completion for s in seqs)
    trl_sft = -trl.sum() / n_tokens  # mean CE over the completion tokens of the batch
    assert weighted_nll(ours, torch.ones(4), normaliser("token_mean", 4, n_tokens)).item() == pytest.approx(trl_sft.item(), abs=1e-5)
    weights = torch.tensor([0.5, 2.0, 0.0, 1.5])
    assert weighted_nll(ours, weights, normaliser("sequence_mean", 4, n_tokens)).item() == \
        pytest.approx(-(weights * trl).sum().item() / 4, abs=1e-5)

    beta, label_smoothing = 0.1, 0.0
    chosen, rejected = ours[[0, 2]], ours[[1, 3]]
    ref_chosen, ref_rejected = chosen.detach() + torch.tensor([0.3, -1.0]), rejected.detach() + torch.tensor([2.0, 0.5])
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)  # TRL: pi_logratios - ref_logratios
    trl_dpo = (-F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing).mean()
    loss, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, denominator=2)
    assert loss.item() == pytest.approx(trl_dpo.item(), abs=1e-5)
