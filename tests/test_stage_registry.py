"""One registry of declared stages (w2s/stage.py `@stage`; `import tasks` fills it): every flow's
stage list is traced from the flow and is in the registry, every registered stage belongs to a
flow, names in the config are checked against it, and imports run one way (core ← tasks ← flows;
Prefect only in the adapter)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from w2s.config.loading import load_config

REGISTRY = """
import json
import tasks
from flows.stages import FLOWS, flow_named, stages_of
from w2s.config.loading import load_config
from w2s.orchestration import flow_stages
registry = tasks.all_stages()
d_weak = flow_stages(flow_named("eve"), load_config(None, ["baselines.naive_sft_data=d_weak"]))
paper_sweep = flow_stages(flow_named("sweep"), load_config(None, ["sweep.baselines=false", "sweep.seeds=[0,1]", "sweep.beta_over_lambda=[]",
                                                                  "baselines.naive_sft_data=d_weak"]))
print(json.dumps({"registry": {name: [s.name, list(s.inputs), s.version] for name, s in registry.items()},
                  "flows": {name: list(stages_of(name)) for name in FLOWS} | {"eve[d_weak]": list(d_weak)},
                  "sweep[paper]": list(paper_sweep)}))
"""


@pytest.fixture(scope="module")
def declared():
    # a fresh process: tests declare stand-in stages of their own in this one
    out = subprocess.run([sys.executable, "-c", REGISTRY], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_flow_stage_is_declared_and_every_declared_stage_runs_in_a_flow(declared):
    registry, flows = declared["registry"], declared["flows"]
    assert all(name == stage_name for name, (stage_name, _, _) in registry.items())
    in_flows = {name for stages in flows.values() for name in stages}
    assert in_flows == set(registry)
    eve = flows["eve"]
    # the teacher's gold signal is read before any student trains (`--until teacher_signal`: the gate), against naive
    # SFT's own data: under matched (the default) that is matched_demos, so it is made before the signal
    assert eve[:12] == ["data", "strong_base", "weak_base", "weak_sft", "weak_dpo", "weak_demos", "sampling", "scoring", "weights",
                        "matched_demos", "teacher_signal", "student"]
    assert flows["eve[d_weak]"][9:11] == ["teacher_signal", "student"]
    assert eve[-1] == "report" and set(eve) < set(flows["baselines"])
    # inputs come from the parameter names
    assert registry["scoring"][1] == ["samples", "weak", "weak_ref"] and registry["sampling"][1] == ["exemplars", "data", "strong"]
    assert {f"evaluate_{p}" for p in ("naive_sft", "refinement", "dpo_weak_reward", "strong_evaluator", "eve")} <= set(flows["baselines"])
    # make run reports the paper's comparison (fig. 3/4): naive SFT is in the eve flow, on matched_demos
    # (EVE's prompts and size, the embedded default) or on D_weak (§5) when the config asks for it
    assert {"naive_sft", "evaluate_naive_sft"} <= set(eve) and eve.index("matched_demos") < eve.index("naive_sft")
    assert set(eve) - set(flows["eve[d_weak]"]) == {"matched_demos"}
    # the sweep without baselines trains what the eve flow trains, on each seed
    assert set(declared["sweep[paper]"]) == set(flows["eve[d_weak]"])
    assert registry["matched_demos"][1] == ["data", "weak"] and registry["naive_sft"][1] == ["demos", "strong"]


def test_a_misspelt_stage_in_orchestration_is_rejected_before_compute(tmp_path):
    import tasks  # noqa: F401
    from w2s.stage import check_stage_names

    for override, wrong in (("orchestration.offload.stages=[sampling, scorin]", "scorin"), ("orchestration.stage_retry={studnet: {retries: 2}}", "studnet")):
        with pytest.raises(ValueError, match=f"unknown stage '{wrong}'"):
            check_stage_names(load_config(None, [override]).orchestration)
    check_stage_names(load_config(None, ["orchestration.offload.stages=[evaluate_naive_sft, cls_w2s, strong_evaluator]"]).orchestration)
    cli = [sys.executable, "-m", "w2s.cli", "run", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"run.artifact_root={tmp_path / 'root'}"]
    for extra, message in ((["--set", "orchestration.offload.stages=[scorin]"], "unknown stage 'scorin'"),
                           (["--until", "studnet"], "'studnet' is not a stage of the eve flow")):
        out = subprocess.run(cli + extra, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "root").exists()


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules} | {m for m in modules if m.startswith("w2s.")}


@pytest.mark.parametrize("package", ["w2s", "tasks"])
def test_imports_run_one_way(package):
    """The core imports neither Prefect, the stages nor the flows; stages import no Prefect and no
    flows; the Prefect adapter (the w2s/orchestration package) is imported by flows only; w2s/cli.py
    is the outermost layer (nothing imports it)."""
    adapter = sorted((REPO / "w2s" / "orchestration").glob("*.py"))
    outer = {"w2s/cli.py", *(str(p.relative_to(REPO)) for p in adapter)}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in outer:
            continue
        imported = _top(_imports(path))
        banned = {"prefect", "flows", "w2s.orchestration", "w2s.cli"} | ({"tasks"} if package == "w2s" else set())
        assert not imported & banned, f"{rel} imports {sorted(imported & banned)}"
    assert len(adapter) == 2 and all(not _top(_imports(p)) & {"tasks", "flows", "w2s.cli"} for p in adapter)
