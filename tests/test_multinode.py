"""Several nodes (w2s/training/multinode.py): the Indexed Job + headless Service a stage's training
becomes on Kubernetes, checked field by field; and its container command run for real as two local
"nodes" of one rank each (torchrun rendezvous over 127.0.0.1), which must train what one node of two
ranks trains; and `train` with engines.training.nodes: 2 going through that Job for real against a
stand-in for the cluster API (tests/fake_kubectl.py)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert {"name": "W2S_LAUNCHED_RANK", "value": "1"} in container["env"]  # a rank trains, never launches again


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

    # the same, as a stage runs it: train() with nodes: 2 renders the Job, applies it, waits, cleans up
    kube = tmp_path / "kube"
    kube.mkdir()
    env = {"W2S_KUBECTL": f"{sys.executable} {Path(__file__).parent / 'fake_kubectl.py'}", "FAKE_KUBE_DIR": str(kube),
           "W2S_STAGING_DIR": str(tmp_path), "W2S_GPU_IMAGE": "registry/w2s-gpu:0.1"}
    two_pods = TrainingEngineConfig(world_size=2, nodes=2, staging_claim="w2s-staging", precision="fp32")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        # as in a test process that trained single-process before: the pods' ranks must still train
        patch.setenv("W2S_SINGLE_PROCESS_PID", str(os.getpid()))
        model = shutil.copytree(tiny_char_model_dir, tmp_path / "staged-model")  # inputs live on the shared volume
        through_job = train(cfg, two_pods, "sft", model, [data], tmp_path / "job", progress=False)
    c = load_weights(tmp_path / "job" / "model")
    assert max((a[k] - c[k]).abs().max().item() for k in a) <= 1e-6 * max(1.0, changed)
    assert through_job.metrics["world_size"] == 2 and not (tmp_path / "job" / "launch_spec.json").exists()
    calls = [json.loads(line)[0] for line in (kube / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == "apply" and set(calls[1:-1]) == {"get"} and calls[-1] == "delete"
    applied = json.loads((kube / "applied.json").read_text())["items"]
    assert [i["kind"] for i in applied] == ["Service", "Job"] and applied[1]["spec"]["completions"] == 2
    assert applied[1]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry/w2s-gpu:0.1"


def test_a_multinode_stage_refuses_paths_the_node_pods_cannot_see(tmp_path, monkeypatch):
    """Before anything is applied: every path the spec names must be on the shared staging volume."""
    from w2s.training.multinode import run_job, spec_paths_outside

    spec = {"model_dir": str(tmp_path / "stage" / "in" / "model"), "out_dir": str(tmp_path / "stage" / "out"),
            "data_files": [str(tmp_path / "stage" / "d.parquet"), "/elsewhere/d.parquet"], "ref_logps": None, "resume_dir": None}
    assert spec_paths_outside(spec, str(tmp_path / "stage")) == ["/elsewhere/d.parquet"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    engine = TrainingEngineConfig(world_size=4, nodes=2, staging_claim="w2s-staging")
    monkeypatch.setenv("W2S_KUBECTL", "/nonexistent/kubectl")  # never reached
    monkeypatch.setenv("W2S_STAGING_DIR", str(tmp_path / "stage"))
    with pytest.raises(RuntimeError, match=r"/elsewhere/d.parquet is not under W2S_STAGING_DIR"):
        run_job(tmp_path / "spec.json", engine)
    monkeypatch.delenv("W2S_STAGING_DIR")
    with pytest.raises(RuntimeError, match="set W2S_STAGING_DIR"):
        run_job(tmp_path / "spec.json", engine)
    with pytest.raises(ValueError, match="not a multiple of nodes=2"):
        TrainingEngineConfig(world_size=3, nodes=2, staging_claim="w2s-staging")
    with pytest.raises(ValueError, match="needs engines.training.staging_claim"):
        TrainingEngineConfig(world_size=2, nodes=2)


def test_an_unschedulable_node_pod_fails_the_stage_within_its_pending_limit(tmp_path, monkeypatch):
    """A GPU request no node fits (or a taint the pods do not tolerate) leaves the pods Pending; the
    wait used to poll for ever. The stage fails after node_pending_s with one line naming the pod and
    the scheduler's reason, and the Job is deleted."""
    import time

    from w2s.training.multinode import run_job

    kube = tmp_path / "kube"
    kube.mkdir()
    spec = {"model_dir": str(tmp_path / "m"), "out_dir": str(tmp_path / "o"), "data_files": [str(tmp_path / "d.parquet")],
            "ref_logps": None, "resume_dir": None}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for key, value in {"W2S_KUBECTL": f"{sys.executable} {Path(__file__).parent / 'fake_kubectl.py'}", "FAKE_KUBE_DIR": str(kube),
                       "FAKE_KUBE_UNSCHEDULABLE": "1", "W2S_STAGING_DIR": str(tmp_path), "W2S_GPU_IMAGE": "registry/w2s-gpu:0.1"}.items():
        monkeypatch.setenv(key, value)
    engine = TrainingEngineConfig(world_size=2, nodes=2, staging_claim="w2s-staging", node_pending_s=2,
                                  node_selector={"gpu.type": "h100"})
    started = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        run_job(tmp_path / "spec.json", engine, poll_s=0.2)
    message = str(failure.value)
    assert "\n" not in message and "is Unschedulable" in message and "Insufficient nvidia.com/gpu" in message
    assert "node_pending_s=2" in message and time.monotonic() - started < 30
    calls = [json.loads(line) for line in (kube / "calls.jsonl").read_text().splitlines()]
    assert calls[-1][0] == "delete"
    job = json.loads((kube / "applied.json").read_text())["items"][1]
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["activeDeadlineSeconds"] == engine.node_deadline_s
    assert pod["nodeSelector"] == {"gpu.type": "h100"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
