"""The vLLM engine process: `python -m w2s.generation.vllm_worker IN_FD OUT_FD`.

Started by `vllm_backend.VLLMEngine`, never by hand. vLLM lives in its own process because it does
not free its memory on `del` and spawns engine-core workers that need a `__main__` guard; running
as `-m` gives them one whatever the caller is (pytest, a Prefect worker, a notebook). Messages are
JSON lines on two inherited pipes (stdout stays free for vLLM's own logging): `init` once, then
`generate` and `swap` (new weights of the same architecture, w2s/generation/vllm_swap.py) any number
of times, then `close` or end-of-file (the parent died: exit too). While an op runs, a thread
sends `{"alive": true}` every HEARTBEAT_S, so the parent tells a long generation from a hung process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

HEARTBEAT_S = 10.0  # while an op runs, a line every HEARTBEAT_S; vllm_backend gives up after 12 missed
_CACHE_METRICS = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")


def _cache_counters(llm) -> dict[str, float] | None:
    try:
        found = {m.name: m.value for m in llm.get_metrics() if m.name in _CACHE_METRICS}
    except Exception:  # stats disabled or an engine without the metrics API
        return None
    return found if len(found) == len(_CACHE_METRICS) else None


def _generate(llm, msg: dict) -> dict:
    from vllm import SamplingParams

    params = msg["params"]
    started = time.perf_counter()
    before = _cache_counters(llm)
    if msg.get("warm_prefix"):
        # Prefill the shared few-shot prefix alone first: requests scheduled in the same step as
        # the first one cannot hit a cache entry that is still being computed.
        llm.generate([msg["warm_prefix"]], SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
    sampling = [
        SamplingParams(
            n=r["n"], seed=r["seed"], temperature=params["temperature"], top_p=params["top_p"],
            max_tokens=params["max_tokens"], stop=params["stop"] or None,
        )
        for r in msg["requests"]
    ]
    outputs = llm.generate([r["prompt"] for r in msg["requests"]], sampling, use_tqdm=False)
    after = _cache_counters(llm)
    results = []
    for out in outputs:
        samples = sorted(out.outputs, key=lambda c: c.index)
        results.append([
            # stop_reason: the stop string, a stop token id, or None for EOS; a stop token is EOS-like
            {"text": c.text, "n_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
             "stop_string": c.stop_reason if isinstance(c.stop_reason, str) else ""}
            for c in samples
        ])
    stats: dict = {"generate_s": time.perf_counter() - started}
    if before is not None and after is not None:
        queries = after[_CACHE_METRICS[0]] - before[_CACHE_METRICS[0]]
        hits = after[_CACHE_METRICS[1]] - before[_CACHE_METRICS[1]]
        stats["prefill_computed"] = int(queries - hits)
        stats["prefix_cache_hits"] = int(hits)
    return {"ok": True, "results": results, "stats": stats}


def main(in_fd: int, out_fd: int) -> int:
    rx = os.fdopen(in_fd, "r", encoding="utf-8")
    tx = os.fdopen(out_fd, "w", encoding="utf-8")
    writing = threading.Lock()
    busy = threading.Event()

    def send(value: dict) -> None:
        with writing:
            tx.write(json.dumps(value) + "\n")
            tx.flush()

    def heartbeat() -> None:  # while an op runs: the parent reads silence as a hung process
        while True:
            busy.wait()
            time.sleep(HEARTBEAT_S)
            if busy.is_set():
                try:
                    send({"alive": True})
                except (BrokenPipeError, OSError, ValueError):
                    return

    threading.Thread(target=heartbeat, daemon=True, name="w2s-heartbeat").start()
    llm = None
    for line in rx:
        msg = json.loads(line)
        busy.set()
        try:
            if msg["op"] == "init":
                started = time.perf_counter()
                from vllm import LLM

                from w2s.generation.vllm_swap import quiet_intended_narrowing

                quiet_intended_narrowing()  # the first load (the engine core is this process on CPU)
                llm = LLM(**msg["llm"])
                send({"ok": True, "init_s": time.perf_counter() - started, "vllm_version": _version()})
            elif msg["op"] == "generate":
                send(_generate(llm, msg))
            elif msg["op"] == "swap":  # the parent times it (Engine.use_weights)
                llm.collective_rpc("w2s_swap_weights", args=(msg["weights_path"],))
                llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
                send({"ok": True})
            elif msg["op"] == "close":
                send({"ok": True})
                break
            else:
                raise ValueError(f"unknown op {msg['op']!r}")
        except Exception as exc:
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
            if msg.get("op") == "init":
                return 1
        finally:
            busy.clear()
    _shutdown(llm)
    return 0


def _shutdown(llm) -> None:
    # Stop the engine-core process gracefully (otherwise vLLM force-kills it at exit and warns).
    try:
        llm.llm_engine.engine_core.shutdown(timeout=30)
    except Exception:
        pass


def _version() -> str:
    import vllm

    return getattr(vllm, "__version__", "?")


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
