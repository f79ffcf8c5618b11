"""Which forward is the policy vLLM samples from? vLLM's own log-prob of each sample it draws against
the transformers forward of the same model folder in fp32 and in bf16, on the sampled token ids.

    .venv/bin/python scripts/sampler_logprobs.py MODEL_DIR --ref REF_DIR --prompts ROOT/data/KEY/test.parquet [--n 48]

k3 (§9.3) is unbiased only when log π_θ(y) is the log-prob of the distribution that drew y. A model
trained in bf16 keeps fp32 master weights, and its folder holds them; vLLM runs it in the dtype its
config.json declares (bfloat16), a different function from the fp32 forward of the same file. This
prints, over `--n` test prompts (one sample each, temperature 1, evaluation's stop and length):
the mean |vLLM − HF| of the sequence log-prob in each format, and k1 = mean(log π_θ − log π_ref)
in each (an estimate of KL(π_θ‖π_ref) ≥ 0: a negative value says the scored π_θ is not the sampler).
Measured on 2026-12-06: docs/results/README.md ("The KL estimate").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@torch.inference_mode()
def summed_logps(model_dir: str, rows: list[tuple[list[int], list[int]]], dtype: torch.dtype) -> np.ndarray:
    from w2s.models.build import load_pretrained

    model, _ = load_pretrained(model_dir, dtype=dtype)
    out = []
    for prompt_ids, drawn in rows:
        ids = torch.tensor([prompt_ids + drawn])
        logp = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
        out.append(float(logp[torch.arange(len(drawn)), torch.tensor(drawn)].sum()))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the policy's model folder (an artifact's model/ or checkpoints/step-*)")
    parser.add_argument("--ref", required=True, help="π_ref's model folder (the KL reference)")
    parser.add_argument("--prompts", required=True, help="a Parquet file with a `prompt` column (the data stage's test.parquet)")
    parser.add_argument("--n", type=int, default=48)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    from w2s.config import EvaluationConfig, GenerationEngineConfig
    from w2s.generation.vllm_backend import llm_kwargs

    prompts = pq.read_table(args.prompts, columns=["prompt"]).column("prompt").to_pylist()[: args.n]
    kwargs = llm_kwargs(GenerationEngineConfig(backend="vllm"), args.model, 0, 2048)
    kwargs.pop("worker_extension_cls")
    evaluation = EvaluationConfig()
    params = [SamplingParams(temperature=evaluation.temperature, max_tokens=evaluation.max_tokens, stop=["\n"], seed=i, logprobs=0)
              for i in range(len(prompts))]
    outputs = LLM(**kwargs).generate(prompts, params, use_tqdm=False)
    rows = [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outputs]
    sampler = np.array([o.outputs[0].cumulative_logprob for o in outputs])
    print(f"{len(rows)} samples of {args.model}; vLLM's own mean log-prob {sampler.mean():.2f}")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        policy, ref = summed_logps(args.model, rows, dtype), summed_logps(args.ref, rows, dtype)
        print(f"HF {name}: mean |vLLM − HF| {np.abs(sampler - policy).mean():.3f} nats, mean (vLLM − HF) {np.mean(sampler - policy):+.3f}; "
              f"k1 = mean(log π_θ − log π_ref) {np.mean(policy - ref):+.3f}")


if __name__ == "__main__":
    main()
