"""A few weighted_mle steps on the real SmolLM2-135M through DeepSpeed (CPU, fp32)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.test_training_common import load_weights
from w2s.config import StudentConfig, TrainingEngineConfig
from w2s.training import train


@pytest.mark.slow
def test_weighted_mle_steps_on_smollm2(tmp_path, smollm2_dir):
    rows = {
        "prompt": ["Summarise: The cat sat on the mat all day.\nSummary:", "Summarise: It rained in Paris on Monday.\nSummary:",
                   "Summarise: Tom baked bread for his sister.\nSummary:", "Summarise: The train to Rome was late.\nSummary:"],
        "completion": [" A cat sat on a mat.", " Rain in Paris.", " Tom baked bread.", " The Rome train was late."],
        "weight": [1.7, 0.3, 1.2, 0.8],
    }
    pq.write_table(pa.table(rows), tmp_path / "d.parquet")
    cfg = StudentConfig(learning_rate=2e-5, warmup_steps=0, lr_scheduler="constant", batch_size=4, micro_batch_size=2,
                        max_steps=3, max_seq_len=64, normalisation="token_mean", checkpoint_fractions=[1.0])
    result = train(cfg, TrainingEngineConfig(zero_stage=2), "weighted_mle", smollm2_dir, [tmp_path / "d.parquet"],
                   tmp_path / "out", progress=False)
    losses = [h["loss"] for h in result.history]
    # a pretrained model: weighted per-token NLL well below a random model's ln(49152) ≈ 10.8
    assert 0 < losses[0] < 6, losses
    assert losses[-1] < losses[0], losses
    before, after = load_weights(smollm2_dir), load_weights(tmp_path / "out" / "model")
    assert before.keys() == after.keys()
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert result.history[-1]["tokens_per_s"] > 0 and result.history[-1]["grad_norm"] > 0
