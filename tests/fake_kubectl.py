"""A stand-in for `kubectl` against a cluster, for tests/test_multinode.py: W2S_KUBECTL points here.

It does what the cluster would do with the manifest w2s/training/multinode.py applies, on this
machine: `apply -f -` starts each pod of an Indexed Job as a local process running the container's
command, with JOB_COMPLETION_INDEX set and `$(JOB_COMPLETION_INDEX)` expanded (as the kubelet
does), the container's env added, the image's `python` being this interpreter and pod 0's DNS name
resolving to 127.0.0.1 (the headless Service's job) on a free port; `get job NAME -o json` reports
succeeded / failed pods from their exit codes; `get pods -l w2s/job=NAME -o json` lists them, Running
or Succeeded/Failed; `logs -l w2s/job=NAME` prints their output; `delete` stops what still runs. With
FAKE_KUBE_UNSCHEDULABLE=1 no node can take the pods: they are listed Pending with PodScheduled False,
reason Unschedulable, as the scheduler reports a GPU request no node fits. Every call is appended to
`calls.jsonl` in $FAKE_KUBE_DIR.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_KUBE_DIR"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


UNSCHEDULABLE = os.environ.get("FAKE_KUBE_UNSCHEDULABLE") == "1"


def apply(items: list[dict]) -> None:
    for job in (i for i in items if i["kind"] == "Job"):
        name, spec = job["metadata"]["name"], job["spec"]
        (STATE / f"{name}.pods").write_text(str(spec["completions"]))
        if UNSCHEDULABLE:
            continue
        container = spec["template"]["spec"]["containers"][0]
        line = container["command"][2].replace(f"{name}-0.{name}", "127.0.0.1").replace("--master-port 29500", f"--master-port {_free_port()}")
        line = line.replace("python -m", f"{sys.executable} -m", 1)
        for index in range(spec["completions"]):
            env = dict(os.environ) | {e["name"]: e["value"] for e in container["env"]} | {"JOB_COMPLETION_INDEX": str(index)}
            env.pop("W2S_KUBECTL", None)
            pod = STATE / f"{name}-{index}"
            shell = f"{line.replace('$(JOB_COMPLETION_INDEX)', str(index))}; echo $? > {pod}.rc"
            proc = subprocess.Popen(["/bin/sh", "-c", shell], env=env, stdout=open(f"{pod}.log", "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            Path(f"{pod}.pid").write_text(str(proc.pid))


def status(name: str) -> dict:
    codes = [int(p.read_text()) for p in STATE.glob(f"{name}-*.rc") if p.read_text().strip()]
    return {"status": {"succeeded": sum(c == 0 for c in codes), "failed": sum(c != 0 for c in codes)}}


def pods(name: str) -> dict:
    items = []
    for index in range(int((STATE / f"{name}.pods").read_text())):
        pod, rc = f"{name}-{index}", STATE / f"{name}-{index}.rc"
        if UNSCHEDULABLE:
            status = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                           "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
        elif rc.exists() and rc.read_text().strip():
            status = {"phase": "Succeeded" if rc.read_text().strip() == "0" else "Failed"}
        else:
            status = {"phase": "Running"}
        items.append({"metadata": {"name": pod}, "status": status})
    return {"items": items}


def main(args: list[str]) -> int:
    with open(STATE / "calls.jsonl", "a") as calls:
        calls.write(json.dumps(args) + "\n")
    if args[:3] == ["apply", "-f", "-"]:
        document = json.load(sys.stdin)
        (STATE / "applied.json").write_text(json.dumps(document))
        apply(document["items"])
    elif args[:2] == ["get", "job"]:
        print(json.dumps(status(args[2])))
    elif args[:2] == ["get", "pods"]:
        print(json.dumps(pods(args[args.index("-l") + 1].split("=", 1)[1])))
    elif args[0] == "logs":
        name = args[args.index("-l") + 1].split("=", 1)[1]
        for log in sorted(STATE.glob(f"{name}-*.log")):
            print("".join(f"[{log.stem}] {line}" for line in log.read_text().splitlines(True)[-40:]))
    elif args[0] == "delete":
        for pid in STATE.glob("*.pid"):
            try:
                os.killpg(int(pid.read_text()), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    else:
        print(f"fake kubectl: unsupported {args}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
