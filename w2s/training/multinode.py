"""Training across several nodes: one pod per node, PyTorch's rendezvous, the same rank entry point.

A single node runs its ranks under DeepSpeed's launcher (w2s/training/launcher.py). With
`engines.training.nodes: N > 1` the launcher calls `run_job` instead, and every node runs

    python -m torch.distributed.run --nnodes N --nproc-per-node P --node-rank R \\
        --master-addr <pod 0> --master-port 29500 -m w2s.training.rank <spec>

(torchrun: it sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* for each of its P ranks, which is all
`deepspeed.init_distributed` reads), so the ranks are the ones a single node would start, only
spread out. On Kubernetes the nodes are the pods of an Indexed Job (`job_manifest`): pod R gets
R from `JOB_COMPLETION_INDEX`, a headless Service gives pod 0 a stable DNS name for the
rendezvous, each pod asks for P GPUs, and the spec, model and data sit on the shared volume that
holds the staging folder (`W2S_STAGING_DIR`), where rank 0 writes `train_result.json`.
`run_job` checks that everything the spec names lies on that volume, applies the manifest with
`kubectl` ($W2S_KUBECTL, default `kubectl`), polls the Job until all N pods succeeded or one
failed (then its pods' last log lines are in the error), and deletes the Job and Service either way.
`tests/test_multinode.py` renders the manifest, checks it, runs its container command as two local
"nodes" of one rank each against one node of two ranks, and runs a training stage end to end with
nodes: 2 through `run_job` against tests/fake_kubectl.py, a stand-in for the cluster API that starts
the Job's pods as local processes (the ranks, the rendezvous and the training are real).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from w2s.training.rendezvous import RENDEZVOUS_ENV

RANK_ENTRY = "w2s.training.rank"
LAUNCHED_MARK = "W2S_LAUNCHED_RANK"  # w2s.training.engine.LAUNCHED_MARK (not imported: that pulls in torch)
RENDEZVOUS_PORT = 29500


def node_command(spec_path: str, nodes: int, per_node: int, node_rank: str, master_addr: str,
                 master_port: int = RENDEZVOUS_PORT, python: str = sys.executable) -> list[str]:
    """The command one node runs; `node_rank` may be a shell expression such as $(JOB_COMPLETION_INDEX)."""
    return [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(per_node),
            "--node-rank", node_rank, "--master-addr", master_addr, "--master-port", str(master_port),
            "-m", RANK_ENTRY, spec_path]


def job_name(stage: str, key: str) -> str:
    """A DNS-1123 name for a stage's training job (≤ 52 characters: pod names add a suffix)."""
    name = re.sub(r"[^a-z0-9-]", "-", f"w2s-{stage}-{key[:10]}".lower()).strip("-")
    return name[:52].rstrip("-")


def job_manifest(name: str, image: str, spec_path: str, nodes: int, gpus_per_node: int, staging_claim: str,
                 staging_dir: str = "/staging", placement: dict | None = None) -> list[dict]:
    """A headless Service and an Indexed Job of `nodes` pods that run one training stage.
    `placement`: the Job's `deadline_s` (activeDeadlineSeconds) and the pods' `node_selector`."""
    placement = {"deadline_s": 86_400, "node_selector": {}, **(placement or {})}
    labels = {"app.kubernetes.io/name": "w2s-training", "w2s/job": name}
    master = f"{name}-0.{name}"  # pod <job>-<index> in the Service's subdomain
    command = node_command(spec_path, nodes, gpus_per_node, "$(JOB_COMPLETION_INDEX)", master, python="python")
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
        "spec": {"clusterIP": "None", "selector": labels, "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
                 "publishNotReadyAddresses": True},
    }
    container = {
        "name": "rank", "image": image, "command": ["/bin/sh", "-c", " ".join(command)],
        # the Job is the ranks' launcher: marked, a rank trains instead of launching again
        "env": [{"name": "W2S_STAGING_DIR", "value": staging_dir}, {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": LAUNCHED_MARK, "value": "1"}, {"name": RENDEZVOUS_ENV, "value": ""}],  # nodes meet over TCP
        "resources": {"limits": {"nvidia.com/gpu": gpus_per_node}, "requests": {"nvidia.com/gpu": gpus_per_node}},
        "ports": [{"containerPort": RENDEZVOUS_PORT}],
        "volumeMounts": [{"name": "staging", "mountPath": staging_dir}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": 0,
            "activeDeadlineSeconds": placement["deadline_s"],
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": name, "restartPolicy": "Never", "containers": [container],
                    # GPU nodes are commonly tainted; without the toleration the pods would wait forever
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    **({"nodeSelector": dict(placement["node_selector"])} if placement["node_selector"] else {}),
                    "volumes": [{"name": "staging", "persistentVolumeClaim": {"claimName": staging_claim}},
                                {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    }
    return [service, job]


def _kubectl(args: list[str], stdin: str | None = None) -> str:
    command = [*shlex.split(os.environ.get("W2S_KUBECTL", "kubectl")), *args]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def spec_paths_outside(spec: dict, staging_dir: str) -> list[str]:
    """The paths a rank reads or writes that the node pods could not see (not under the volume)."""
    root = Path(staging_dir).resolve()
    named = [spec["model_dir"], spec["out_dir"], *spec["data_files"], spec.get("ref_logps"), spec.get("resume_dir")]
    return [p for p in named if p and not Path(p).resolve().is_relative_to(root)]


def run_job(spec_path: Path, engine, poll_s: float = 5.0) -> None:
    """Runs one training stage's ranks as an Indexed Job (engine.nodes pods) and waits for it."""
    staging = os.environ.get("W2S_STAGING_DIR")
    if not staging:
        raise RuntimeError("engines.training.nodes > 1: set W2S_STAGING_DIR (and TMPDIR) to a folder on the volume of "
                           f"engines.training.staging_claim={engine.staging_claim!r}")
    outside = spec_paths_outside(json.loads(Path(spec_path).read_text()), staging)
    if outside:
        raise RuntimeError(f"engines.training.nodes > 1: {outside[0]} is not under W2S_STAGING_DIR={staging}, so the node "
                           "pods cannot read it (set TMPDIR under W2S_STAGING_DIR too: inputs are materialised there)")
    image = engine.node_image or os.environ.get("W2S_GPU_IMAGE")
    if not image:
        raise RuntimeError("engines.training.nodes > 1 needs an image for the node pods: engines.training.node_image or $W2S_GPU_IMAGE")
    name = job_name("train", hashlib.sha256(str(Path(spec_path).resolve()).encode()).hexdigest())
    placement = {"deadline_s": engine.node_deadline_s, "node_selector": engine.node_selector}
    items = job_manifest(name, image, str(spec_path), engine.nodes, engine.world_size // engine.nodes, engine.staging_claim, staging,
                         placement)
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    _kubectl(["apply", "-f", "-"], manifest)
    try:
        _wait(name, engine, poll_s)
    finally:
        _kubectl(["delete", "-f", "-", "--ignore-not-found=true", "--wait=false"], manifest)


# a pod in one of these states will not start by waiting (kubelet's reasons)
STUCK = {"Unschedulable", "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}


def _wait(name: str, engine, poll_s: float) -> None:
    """Until every node pod succeeded; a failed pod, a Job past its deadline, a pod stuck (STUCK)
    for engine.node_pending_s, or the deadline passing here each raise one line."""
    started, stuck_since = time.monotonic(), {}
    while True:
        status = json.loads(_kubectl(["get", "job", name, "-o", "json"])).get("status", {})
        if status.get("failed", 0) > 0:
            logs = _kubectl(["logs", "-l", f"w2s/job={name}", "--tail=40", "--prefix=true"])
            raise RuntimeError(f"training job {name}: {status['failed']} of {engine.nodes} node pods failed; their last lines:\n{logs}")
        if status.get("succeeded", 0) >= engine.nodes:
            return
        if any(c.get("reason") == "DeadlineExceeded" for c in status.get("conditions", [])) \
                or time.monotonic() - started > engine.node_deadline_s + 60:
            raise RuntimeError(f"training job {name}: not finished within engines.training.node_deadline_s={engine.node_deadline_s}")
        pods = json.loads(_kubectl(["get", "pods", "-l", f"w2s/job={name}", "-o", "json"])).get("items", [])
        for pod, reason in _stuck(pods).items():
            since = stuck_since.setdefault((pod, reason[0]), time.monotonic())
            if time.monotonic() - since > engine.node_pending_s:
                raise RuntimeError(f"training job {name}: pod {pod} is {reason[0]} ({reason[1]}) for over "
                                   f"engines.training.node_pending_s={engine.node_pending_s} s")
        time.sleep(poll_s)


def _stuck(pods: list[dict]) -> dict[str, tuple[str, str]]:
    """pod name → (reason, message) for each pod that cannot be scheduled or cannot start its container."""
    found = {}
    for pod in pods:
        status, name = pod.get("status", {}), pod.get("metadata", {}).get("name", "?")
        for condition in status.get("conditions", []):
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and condition.get("reason") in STUCK:
                found[name] = (condition["reason"], condition.get("message", ""))
        for container in status.get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting", {})
            if waiting.get("reason") in STUCK:
                found[name] = (waiting["reason"], waiting.get("message", ""))
    return found
