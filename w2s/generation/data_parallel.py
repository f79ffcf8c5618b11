"""vLLM data parallelism: `engines.generation.data_parallel_size` engines side by side, one process
each, every replica on its own `tensor_parallel_size` GPUs (CUDA_VISIBLE_DEVICES) or, on CPU, its
own cores (VLLM_CPU_OMP_THREADS_BIND), so replicas never share a device.

A request goes whole to one replica (its K samples stay together), requests are cut into contiguous
runs of near-equal work (n × (prompt + max_tokens) characters; a run of requests sharing a few-shot
prefix stays on one replica's prefix cache), the replicas load and generate concurrently, and the
records come back in request order. Every sample carries its own seed, so which replica drew it
does not change it (up to the last bits of batched kernels, as vllm_backend.py says).
"""

from __future__ import annotations

import os

import torch

from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation.requests import Record, Request
from w2s.generation.vllm_backend import VLLMEngine, cpu_threads_bind, groups_of


def replica_envs(data_parallel: int, tensor_parallel: int, on_gpu: bool,
                 gpus: list[str] | None = None, cores: list[int] | None = None) -> list[dict[str, str]]:
    """The environment each replica's process starts with: its GPUs, or its CPU cores (one `|`-
    separated core list per tensor-parallel rank, vLLM-cpu's format). Fails in one line when the
    machine has too few."""
    need = data_parallel * tensor_parallel
    if on_gpu:
        if gpus is None:
            shown = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = shown.split(",") if shown else [str(i) for i in range(torch.cuda.device_count())]
        if len(gpus) < need:
            raise ValueError(f"engines.generation: data_parallel_size {data_parallel} × tensor_parallel_size "
                             f"{tensor_parallel} needs {need} GPUs; {len(gpus)} visible")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(group)} for group in groups_of(gpus, tensor_parallel, data_parallel)]
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    return [{"VLLM_CPU_OMP_THREADS_BIND": bind} for bind in cpu_threads_bind(cores, tensor_parallel, data_parallel)]


def split_requests(requests: list[Request], parts: int, max_tokens: int) -> list[list[int]]:
    """Indices of `requests` for each replica: contiguous runs, cut where the running work crosses
    each multiple of total/parts."""
    work = [r.n * (len(r.prompt) + 4 * max_tokens) for r in requests]  # ~4 characters a token
    total, done, runs = sum(work), 0, [[] for _ in range(parts)]
    for i, w in enumerate(work):
        runs[min(parts - 1, int(parts * (done + w / 2) / max(total, 1)))].append(i)
        done += w
    return runs


class DataParallelVLLM:
    """The Engine backend for data_parallel_size > 1: the VLLMEngine interface over several replicas."""

    backend = "vllm"

    def __init__(self, engine_cfg: GenerationEngineConfig, model_dir: str, seed: int, context: int):
        envs = replica_envs(engine_cfg.data_parallel_size, engine_cfg.tensor_parallel_size, torch.cuda.is_available())
        self.replicas: list[VLLMEngine] = []
        try:
            for env in envs:
                self.replicas.append(VLLMEngine(engine_cfg, model_dir, seed, context, env_extra=env, wait=False))
            for replica in self.replicas:
                replica.await_init()
        except BaseException:
            self.close()
            raise
        self.init_s = max(r.init_s for r in self.replicas)
        self.info = {**self.replicas[0].info, "pid": [r.proc.pid for r in self.replicas],
                     "data_parallel_size": len(self.replicas), "replica_env": envs}

    def generate(self, requests: list[Request], params: GenerationParams) -> tuple[list[Record], dict]:
        runs = split_requests(requests, len(self.replicas), params.max_tokens)
        busy = [(replica, [requests[i] for i in run]) for replica, run in zip(self.replicas, runs) if run]
        for replica, part in busy:
            replica.submit(part, params)
        records, stats = [], []
        for replica, part in busy:  # runs are contiguous and in order, so records stay in request order
            found, stat = replica.collect(part)
            records += found
            stats.append(stat)
        merged = {"generate_s": max(s["generate_s"] for s in stats), "replica_requests": [len(p) for _, p in busy]}
        if all("prefill_computed" in s for s in stats):
            merged["prefill_computed"] = sum(s["prefill_computed"] for s in stats)
        return records, merged

    def swap_weights(self, model_dir: str) -> None:
        for replica in self.replicas:
            replica.swap_weights(model_dir)

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
