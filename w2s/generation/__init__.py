"""Generation engine (vLLM or transformers behind one interface) and the few-shot prompt builders."""

from w2s.generation.engine import (Engine, answer_each, answer_with, Generation, generate, keep_engines_warm, open_engine, pinned_backend,
                                   resolve_backend, vllm_available)
from w2s.generation.prompts import fewshot_prefix, fewshot_prompt, refinement_prompt
from w2s.generation.requests import Record, Request, check_requests, derive_seed, truncate_at_stop

__all__ = [
    "Engine", "Generation", "answer_each", "answer_with", "Record", "Request", "check_requests", "derive_seed", "fewshot_prefix", "fewshot_prompt",
    "generate", "keep_engines_warm", "open_engine", "pinned_backend", "refinement_prompt", "resolve_backend", "truncate_at_stop", "vllm_available",
]
