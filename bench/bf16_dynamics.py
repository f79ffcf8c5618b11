"""Which part of bf16 training stops DPO from learning? fp32 compute with bf16 *rounding* emulated, so it
runs on any CPU (one without native bf16 computes bf16 hundreds of times slower). DPO on the embedded
default's gold pairs, SmolLM2-135M (the strong_base artifact), 8 steps of batch 16 at lr 1e-5, β 0.1:

    .venv/bin/w2s run --config pipeline_config.yaml --until strong_base
    .venv/bin/python bench/bf16_dynamics.py fp32,ds_bf16,autocast,autocast_grid,ds_offgrid 8

Each variant prints its mean reward margin per step; docs/results/bf16-dynamics.md has the numbers.
Activations are not rounded (only the weights the forward reads), so this isolates the weights.

Variants (each: plain AdamW loop, same rows/order, precomputed ref log-probs in the variant's format):
  fp32          fp32 weights, fp32 forward (truth)
  ds_bf16       masters start bf16-rounded (DeepSpeed builds them from the bf16 module); the forward
                reads every parameter rounded to bf16 (what a bf16 module does)
  autocast      masters = the fp32 checkpoint; the forward reads Linear weights rounded (autocast
                casts them), norms and embedding lookups in fp32 (TRL's bf16 mode)
  autocast_grid autocast, but masters start bf16-rounded (a bf16-exact checkpoint)
  ds_offgrid    every parameter rounded in the forward, masters start at the fp32 checkpoint
"""
import glob
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s.config import DPOConfig  # noqa: E402
from w2s.models.build import load_pretrained  # noqa: E402
from w2s.training.data import batch_indices, collate, example_sequences, load_data  # noqa: E402
from w2s.training.objectives import dpo_loss, sequence_logps  # noqa: E402

torch.set_num_threads(2)
STEPS, LR, WARM, BATCH, MICRO, BETA = int(sys.argv[2]) if len(sys.argv) > 2 else 8, 1e-5, 2, 16, 8, 0.1
ROOT = sys.argv[3] if len(sys.argv) > 3 else "artifacts"
model_dir = glob.glob(f"{ROOT}/strong_base/*/model")[0]
pairs = glob.glob(f"{ROOT}/data/*/preferences.parquet")[0]


def rb(t):
    return t.to(torch.bfloat16).to(t.dtype)


class STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return rb(w)

    @staticmethod
    def backward(ctx, g):
        return g


_linear = F.linear


def run(variant):
    model, tok = load_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    cfg = DPOConfig(learning_rate=LR, batch_size=BATCH, micro_batch_size=MICRO, max_seq_len=256, beta=BETA)
    data = load_data([pairs], "pair", tok, cfg, None)
    grid = variant in ("ds_bf16", "autocast_grid")
    round_all = variant in ("ds_bf16", "ds_offgrid")
    round_linear = variant.startswith("autocast")
    params = [p for p in model.parameters() if p.requires_grad]
    if grid:
        with torch.no_grad():
            for p in params:
                p.copy_(rb(p))
    if round_linear:
        F.linear = lambda x, w, b=None: _linear(x, STE.apply(w), b)
    else:
        F.linear = _linear

    def logps(batch):
        if not round_all:
            return sequence_logps(model, batch)
        saved = [p.data.clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.copy_(rb(p))
        out = sequence_logps(model, batch)
        return out, saved

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = len(data)
    # reference log-probs: the initial policy in this variant's format
    ref = torch.zeros(2 * n)
    with torch.no_grad():
        used = sorted({i for st in range(STEPS) for i in batch_indices(st, n, BATCH, 0)})
        for s in range(0, len(used), MICRO):
            idx = used[s : s + MICRO]
            b = collate(example_sequences(data, idx), pad)
            o = logps(b)
            if round_all:
                o, saved = o
                for p, v in zip(params, saved):
                    p.data.copy_(v)
            for j, i in enumerate(idx):
                ref[2 * i], ref[2 * i + 1] = o[2 * j], o[2 * j + 1]
    refc, refr = ref[0::2], ref[1::2]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM))
    hist = []
    for step in range(STEPS):
        t0 = time.time()
        idx = batch_indices(step, n, BATCH, 0)
        opt.zero_grad()
        tot = {"loss": 0.0, "margin": 0.0}
        for m in range(0, BATCH, MICRO):
            micro = idx[m : m + MICRO]
            b = collate(example_sequences(data, micro), pad)
            o = logps(b)
            saved = None
            if round_all:
                o, saved = o
            i = torch.tensor(micro)
            loss, st = dpo_loss(o[0::2], o[1::2], refc[i], refr[i], BETA, float(BATCH))
            loss.backward()
            if saved is not None:  # straight-through: grads of the rounded weights land on the masters
                for p, v in zip(params, saved):
                    p.data.copy_(v)
            tot["loss"] += loss.item()
            tot["margin"] += st["reward_margin"].sum().item() / BATCH
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        hist.append({"step": step + 1, **tot, "grad_norm": gn, "lr": lr, "s": time.time() - t0})
        print(variant, json.dumps({k: round(v, 5) for k, v in hist[-1].items()}), flush=True)
    F.linear = _linear
    return hist


if __name__ == "__main__":
    out = {v: run(v) for v in sys.argv[1].split(",")}
    print(json.dumps({v: [round(h["margin"], 4) for h in hist] for v, hist in out.items()}))
