"""The vLLM engine process is waited on with a deadline: while an op runs it sends a heartbeat, and
the parent stops a process that sends nothing for SILENCE_S (hung) instead of waiting forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from w2s.generation import vllm_backend, vllm_worker
from w2s.generation.vllm_backend import ReplyLines, VLLMEngine


def test_reply_lines_split_join_and_end():
    rx, tx = os.pipe()
    lines = ReplyLines(rx)
    os.write(tx, b'{"a": 1}\n{"b"')
    assert lines.next(1) == b'{"a": 1}'
    os.write(tx, b': 2}\n')
    assert lines.next(1) == b'{"b": 2}'
    with pytest.raises(TimeoutError):
        lines.next(0.2)
    os.close(tx)
    assert lines.next(1) is None
    lines.close()


def _engine_reading(rx: int, proc) -> VLLMEngine:
    engine = VLLMEngine.__new__(VLLMEngine)  # the reply side only: no vLLM process to start
    engine._rx, engine.proc = ReplyLines(rx), proc
    return engine


def test_heartbeats_keep_a_long_op_alive_and_silence_stops_a_hung_process(monkeypatch):
    monkeypatch.setattr(vllm_backend, "SILENCE_S", 0.5)
    rx, tx = os.pipe()
    engine = _engine_reading(rx, subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))

    def beating():  # 1.5 s of heartbeats, then the reply: three times the silence limit in all
        for _ in range(6):
            os.write(tx, b'{"alive": true}\n')
            time.sleep(0.25)
        os.write(tx, b'{"ok": true, "answer": 42}\n')

    threading.Thread(target=beating).start()
    assert engine._receive()["answer"] == 42
    with pytest.raises(RuntimeError, match="sent nothing for 0.5 s"):
        engine._receive()
    assert engine.proc.poll() is not None  # stopped, not left running
    os.close(tx)


def test_the_worker_beats_while_an_op_runs(monkeypatch):
    monkeypatch.setattr(vllm_worker, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(vllm_worker, "_generate", lambda llm, msg: time.sleep(1.0) or {"ok": True, "results": [], "stats": {}})
    monkeypatch.setattr(vllm_worker, "_shutdown", lambda llm: None)
    to_worker, worker_in = os.pipe()
    worker_out, from_worker = os.pipe()
    done = []
    worker = threading.Thread(target=lambda: done.append(vllm_worker.main(to_worker, from_worker)))
    worker.start()
    with os.fdopen(worker_in, "w") as send:
        send.write(json.dumps({"op": "generate"}) + "\n")
        send.flush()
        lines = ReplyLines(worker_out)
        seen = []
        while not seen or seen[-1].get("alive"):
            seen.append(json.loads(lines.next(5)))
        send.write(json.dumps({"op": "close"}) + "\n")
    worker.join(10)
    assert len(seen) >= 5 and all(m == {"alive": True} for m in seen[:-1]) and seen[-1]["ok"]
    assert done == [0]
