"""Several nodes (w2s/training/multinode.py): the Indexed Job + headless Service a stage's training
becomes on Kubernetes, checked field by field; and its container command run for real as two local
"nodes" of one rank each (torchrun rendezvous over 127.0.0.1), which must train what one node of two
ranks trains."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.test_training_common import load_weights, write_completions
from w2s.config import TrainConfig, TrainingEngineConfig
from w2s.training.multinode import job_manifest, job_name, node_command


def test_the_job_manifest_starts_one_pod_per_node_that_rendezvous_at_pod_zero():
    name = job_name("student", "4f1c2a9e0b7d55aa")
    assert name == "w2s-student-4f1c2a9e0b" and len(name) <= 52
    service, job = job_manifest(name, "registry/w2s-gpu:0.1", "/staging/x/launch_spec.json", nodes=4, gpus_per_node=8,
                                staging_claim="w2s-staging")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == job["spec"]["template"]["metadata"]["labels"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 4, 4, 0)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == name and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8 == container["resources"]["requests"]["nvidia.com/gpu"]
    shell, flag, line = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    args = shlex.split(line)
    opts = dict(zip(args[3:13:2], args[4:13:2]))
    assert args[:3] == ["python", "-m", "torch.distributed.run"]
    assert opts == {"--nnodes": "4", "--nproc-per-node": "8", "--node-rank": "$(JOB_COMPLETION_INDEX)",
                    "--master-addr": f"{name}-0.{name}", "--master-port": "29500"}
    assert args[-3:] == ["-m", "w2s.training.rank", "/staging/x/launch_spec.json"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claim = next(v for v in pod["volumes"] if v["name"] == "staging")["persistentVolumeClaim"]["claimName"]
    assert claim == "w2s-staging" and mounts["staging"] == "/staging" and mounts["dshm"] == "/dev/shm"
    assert {"name": "W2S_STAGING_DIR", "value": "/staging"} in container["env"]


@pytest.mark.slow
def test_two_nodes_of_one_rank_train_what_one_node_of_two_ranks_trains(tmp_path, tiny_char_model_dir):
    from w2s.training import train
    from w2s.training.engine import _free_port
    from w2s.training.launcher import rank_env, write_spec

    cfg = TrainConfig(learning_rate=3e-3, warmup_steps=1, batch_size=4, micro_batch_size=2, max_steps=3, checkpoint_fractions=[1.0])
    data = write_completions(tmp_path / "d.parquet")
    engine = TrainingEngineConfig(world_size=2, precision="fp32")
    one_node = train(cfg, engine, "sft", tiny_char_model_dir, [data], tmp_path / "one-node", progress=False)

    out = tmp_path / "two-nodes"
    spec = write_spec(cfg, engine, "sft", tiny_char_model_dir, [data], out, None, None, None, 0)
    port = _free_port()
    nodes = [subprocess.Popen(node_command(str(spec), 2, 1, str(rank), "127.0.0.1", port), env=rank_env(), cwd=tmp_path,
                              stdout=open(tmp_path / f"node{rank}.log", "w"), stderr=subprocess.STDOUT) for rank in (0, 1)]
    codes = [n.wait(timeout=600) for n in nodes]
    assert codes == [0, 0], "\n".join((tmp_path / f"node{r}.log").read_text()[-2000:] for r in (0, 1))
    assert (out / "train_result.json").exists()
    a, b = load_weights(tmp_path / "one-node" / "model"), load_weights(out / "model")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    changed = max((a[k] - load_weights(tiny_char_model_dir)[k]).abs().max().item() for k in a)
    assert changed > 0 and worst <= 1e-6 * max(1.0, changed), (worst, changed)  # the same 2 ranks, only spread out
    assert one_node.metrics["world_size"] == 2 and os.path.getsize(out / "train_result.json") > 0
