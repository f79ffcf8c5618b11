"""Training across several nodes: one pod per node, PyTorch's rendezvous, the same rank entry point.

A single node runs its ranks under DeepSpeed's launcher (w2s/training/launcher.py). With
`engines.training.nodes: N > 1` every node runs

    python -m torch.distributed.run --nnodes N --nproc-per-node P --node-rank R \\
        --master-addr <pod 0> --master-port 29500 -m w2s.training.rank <spec>

(torchrun: it sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* for each of its P ranks, which is all
`deepspeed.init_distributed` reads), so the ranks are the ones a single node would start, only
spread out. On Kubernetes the nodes are the pods of an Indexed Job (`job_manifest`): pod R gets
R from `JOB_COMPLETION_INDEX`, a headless Service gives pod 0 a stable DNS name for the
rendezvous, each pod asks for P GPUs, and the spec, model and data sit on the shared volume that
holds the staging folder (`W2S_STAGING_DIR`), where rank 0 writes `train_result.json`.
`tests/test_multinode.py` renders the manifest, checks it, and runs its container command as two
local "nodes" of one rank each, against one node of two ranks.
"""

from __future__ import annotations

import re
import sys

RANK_ENTRY = "w2s.training.rank"
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


def job_manifest(name: str, image: str, spec_path: str, nodes: int, gpus_per_node: int,
                 staging_claim: str, staging_dir: str = "/staging") -> list[dict]:
    """A headless Service and an Indexed Job of `nodes` pods that run one training stage."""
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
        "env": [{"name": "W2S_STAGING_DIR", "value": staging_dir}, {"name": "HF_HUB_OFFLINE", "value": "1"}],
        "resources": {"limits": {"nvidia.com/gpu": gpus_per_node}, "requests": {"nvidia.com/gpu": gpus_per_node}},
        "ports": [{"containerPort": RENDEZVOUS_PORT}],
        "volumeMounts": [{"name": "staging", "mountPath": staging_dir}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": name, "restartPolicy": "Never", "containers": [container],
                    "volumes": [{"name": "staging", "persistentVolumeClaim": {"claimName": staging_claim}},
                                {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    }
    return [service, job]
