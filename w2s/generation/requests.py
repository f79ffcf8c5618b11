"""What both backends take and return, and the checks that run before any engine starts.

A `Request` is one prompt sampled `n` times; sample i uses seed `seed + i` (vLLM's own rule for
`n > 1`, which the transformers backend copies), so a sample's randomness depends only on its
prompt's seed, not on batch composition or shard boundaries. The two backends draw differently from
one seed (vLLM's sampler vs an inverse-CDF draw in hf_backend.py), so a seed pins a sample within a
backend only. A `Record` is one sample; both backends return the same fields, in request order,
samples in index order.

`n_tokens` counts the tokens the engine sampled for the completion, including the EOS token or the
token that completed a stop string (vLLM's `len(token_ids)`); `completion` is the text with the
stop string removed, and `stop_string` says which one ended it ("" for EOS or max_tokens), so
`sampled()` gives back what the policy actually drew: y + the stop string, or y + EOS.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from w2s.config import GenerationParams

log = logging.getLogger(__name__)

# vLLM adds the sample index to the seed: keep every derived seed well inside int32.
_SEED_SPACE = 2**31 - 2**20


@dataclass(frozen=True)
class Request:
    request_id: str
    prompt: str
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Record:
    request_id: str
    sample_idx: int
    completion: str
    n_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens reached)
    seed: int
    stop_string: str = ""  # the stop string that ended the sample; "" when EOS or max_tokens did

    def to_dict(self) -> dict:
        return asdict(self)

    def sampled(self) -> tuple[str, bool]:
        """(text, ended_by_eos): the continuation the engine drew, for scoring it under the policy
        that drew it (k3 KL needs log π of the sample itself). A sample that stopped on a stop
        string drew those characters, not EOS; one that stopped on EOS drew EOS."""
        if self.stop_string:
            return self.completion + self.stop_string, False
        return self.completion, self.finish_reason == "stop"


def derive_seed(run_seed: int, request_id: str) -> int:
    """A per-prompt seed from the run seed: stable across processes (no Python hash salt)."""
    digest = hashlib.sha256(f"{run_seed}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_SPACE


def model_context(model_dir: str | Path) -> int:
    """The context length a model folder declares (config.json), read without loading weights."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ValueError(f"{model_dir}/config.json declares no context length (max_position_embeddings)")


def effective_context(model_dir: str | Path, max_model_len: int | None) -> int:
    native = model_context(model_dir)
    if max_model_len is None:
        return native
    if max_model_len > native:
        raise ValueError(f"engines.generation.max_model_len={max_model_len} exceeds the model's context ({native})")
    return max_model_len


@dataclass(frozen=True)
class Checked:
    """Requests that passed validation, plus what was dropped under the `skip` policy."""

    requests: list[Request]
    prompt_tokens: dict[str, int]
    skipped: list[str]


def check_requests(requests: list[Request], params: GenerationParams, tokenizer, context: int) -> Checked:
    """Fails fast (before an engine starts) on inputs no engine could serve sensibly."""
    if not requests:
        raise ValueError("no prompts to generate from (empty request list)")
    ids = [r.request_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be unique")
    bad_n = [r.request_id for r in requests if r.n < 1]
    if bad_n:
        raise ValueError(f"samples per prompt must be >= 1; requests {bad_n[:5]} ask for fewer")
    empty = [r.request_id for r in requests if not r.prompt]
    if empty:
        raise ValueError(f"empty prompts: {empty[:5]}")
    if params.max_tokens >= context:
        raise ValueError(f"max_tokens={params.max_tokens} leaves no room for a prompt in the model's context ({context} tokens)")
    if any(not s for s in params.stop):
        raise ValueError("stop sequences must be non-empty strings")
    lengths = [len(x) for x in tokenizer([r.prompt for r in requests], add_special_tokens=True)["input_ids"]]
    budget = context - params.max_tokens
    over = [(r.request_id, n) for r, n in zip(requests, lengths) if n > budget]
    if over and params.on_overlong_prompt == "error":
        shown = ", ".join(f"{rid} ({n} tokens)" for rid, n in over[:5])
        raise ValueError(
            f"{len(over)} prompt(s) longer than the context allows: {context} tokens - max_tokens {params.max_tokens} "
            f"= {budget} for the prompt; {shown}{' …' if len(over) > 5 else ''}. "
            "Shorten them, lower max_tokens, or set on_overlong_prompt: skip"
        )
    if over:
        log.warning("skipping %d of %d overlong prompts (> %d tokens): %s", len(over), len(requests), budget, [i for i, _ in over[:10]])
    dropped = {rid for rid, _ in over}
    kept = [r for r in requests if r.request_id not in dropped]
    if not kept:
        raise ValueError("every prompt was overlong and skipped: nothing to generate")
    return Checked(kept, {r.request_id: n for r, n in zip(requests, lengths) if r.request_id not in dropped}, [i for i, _ in over])


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, str]:
    """Text before the earliest stop string (stop string excluded) and that stop string ("" if none
    occurred; of two starting at the same place, the longer, as it is the one the text contains)."""
    found = [(i, -len(s), s) for s in stop if s and (i := text.find(s)) >= 0]
    if not found:
        return text, ""
    cut, _, matched = min(found)
    return text[:cut], matched
