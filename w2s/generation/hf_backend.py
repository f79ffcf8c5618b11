"""The transformers backend: batched, left-padded `generate` for machines without vLLM.

Sampling is done by a logits processor with one `torch.Generator` per row, seeded `seed + i` for
sample i (vLLM's rule), and `generate` then only takes the argmax of a one-hot. So a sample depends
on its own seed, not on which rows share its batch, up to floating-point differences between batch
shapes (left padding changes the matmul shapes; on CPU fp32 we have not seen it flip a token, but it
is not guaranteed). Stop strings end a row early through a stopping criterion and are then cut
exactly from the decoded text (post-truncation).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation.requests import Record, Request, truncate_at_stop


class SeededSampler(LogitsProcessor):
    """Temperature / top-p sampling with a private generator per row; emits a one-hot score."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float().cpu()
        if self.temperature == 0:
            choice = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            if self.top_p < 1:
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                # keep the smallest head whose mass reaches top_p (the first token always stays)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
                sorted_probs = sorted_probs.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            # inverse-CDF draw, one uniform per row from that row's generator (torch.multinomial
            # costs ~10 ms per row over a 49k vocabulary on CPU)
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
            cdf = probs.double().cumsum(-1)
            choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), choice.to(scores.device)] = 0.0
        return out


class StopOnStrings(StoppingCriteria):
    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, list(stop), prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class HFEngine:
    backend = "hf"

    def __init__(self, engine_cfg: GenerationEngineConfig, model_dir: str, seed: int, context: int):
        from w2s.models.build import load_pretrained

        started = time.perf_counter()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.tokenizer = load_pretrained(model_dir, device=device)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        self.batch_size, self.device, self.context, self.seed = engine_cfg.hf_batch_size, device, context, seed
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.init_s = time.perf_counter() - started
        self.info = {"backend": "hf", "device": device, "dtype": str(self.model.dtype), "batch_size": self.batch_size}

    def generate(self, requests: list[Request], params: GenerationParams) -> tuple[list[Record], dict]:
        rows = [(r, i) for r in requests for i in range(r.n)]
        records: list[Record] = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                records.extend(self._batch(rows[start : start + self.batch_size], params))
        prompt_tokens = sum(len(self.tokenizer(r.prompt)["input_ids"]) * r.n for r in requests)
        # no prefix cache: every row prefills its whole prompt
        return records, {"prefill_requested": prompt_tokens, "prefill_computed": prompt_tokens}

    def _batch(self, rows: list[tuple[Request, int]], params: GenerationParams) -> list[Record]:
        enc = self.tokenizer([r.prompt for r, _ in rows], return_tensors="pt", padding=True).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        seeds = [r.seed + i for r, i in rows]
        config = GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=params.max_tokens,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
        )
        stopping = StoppingCriteriaList([StopOnStrings(self.tokenizer, params.stop, prompt_len)] if params.stop else [])
        out = self.model.generate(
            **enc, generation_config=config,
            logits_processor=LogitsProcessorList([SeededSampler(seeds, params.temperature, params.top_p)]),
            stopping_criteria=stopping,
        )
        return [self._record(r, i, seed, out[row, prompt_len:].tolist(), params) for row, ((r, i), seed) in enumerate(zip(rows, seeds))]

    def _record(self, request: Request, idx: int, seed: int, ids: list[int], params: GenerationParams) -> Record:
        eos_at = next((j for j, t in enumerate(ids) if t in self.eos_ids), None)
        body = ids if eos_at is None else ids[:eos_at]
        text, stopped = truncate_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), params.stop)
        if stopped:
            # the token that completed the stop string is the last one the engine sampled
            n = next(j for j in range(1, len(body) + 1) if truncate_at_stop(self.tokenizer.decode(body[:j], skip_special_tokens=True), params.stop)[1])
            reason = "stop"
        elif eos_at is not None:
            n, reason = eos_at + 1, "stop"
        else:
            n, reason = len(ids), "length"
        return Record(request.request_id, idx, text, n, reason, seed, stopped)

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
