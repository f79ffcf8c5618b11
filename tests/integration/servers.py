"""Real servers for integration tests: each in its own process group on 127.0.0.1 and a free port,
its output in a log file (not a pipe: a server's children could keep a pipe open), stopped by group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def start(name: str, argv: list[str], url: str, health: str, logdir: Path, env: dict, cwd: Path, timeout: float = 180) -> Server:
    log = logdir / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, proc, log, url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.tail()}")
        try:
            if httpx.get(f"{url}{health}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(server)
    raise TimeoutError(f"{name} not healthy after {timeout:.0f} s:\n{server.tail()}")


def stop(server: Server, grace: float = 10) -> None:
    """SIGTERM to the whole group, SIGKILL to what is left after `grace` seconds."""
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # the leader may be gone while children (uvicorn workers) linger
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.proc.wait(timeout=grace)


def run_in_group(argv: list[str], log: Path, env: dict, cwd: Path, timeout: float) -> int:
    """A command in its own process group, killed as a group when it ends or times out."""
    with open(log, "a") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def spawn(name: str, argv: list[str], logdir: Path, env: dict, cwd: Path) -> Server:
    """A long-running process with no health endpoint (a Prefect worker), stopped like a server."""
    log = logdir / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, proc, log, "")
