"""The deployed EVE flow against real servers, as users run it (README: "Run it from the Prefect UI /
on a cluster"): `prefect server` (sqlite) and `mlflow server` (sqlite) on 127.0.0.1, a process work
pool, `prefect deploy` of deployments/prefect.yaml, flow runs created through the REST API with
parameters (what the UI's run form posts), and a process worker `--run-once` executing each.

Checked: the run completes; the same trigger again completes with every stage Cached (Prefect task
states and MLflow tags agree); a stage made to fail once is retried by the config's retry policy
and the run completes; MLflow runs read back from the real server; headless Chromium shows the
deployment's typed parameter form and every stage on the flow run's page (screenshots kept under
$W2S_TEST_ARTIFACTS, default tests/artifacts/). Every server runs in its own process group and the
group is killed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from flows.stages import STAGES
from tests.conftest import REPO
from tests.integration.servers import free_port, run_in_group, spawn, start, stop
from w2s.config.loading import load_config
from w2s.orchestration import json_parameters

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
POOL = "local"  # deployments/prefect.yaml: eve-local
EXPERIMENT = "w2s-prefect-it"
SCREENSHOTS = Path(os.environ.get("W2S_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.ui = f"http://127.0.0.1:{self.prefect_port}"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        home = tmp / "prefect-home"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "W2S_"))},
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_UI_URL": self.ui,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.prefect_port),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_LOGGING_LEVEL": "INFO",
            "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5",  # the tiny stages last seconds
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.servers = []

    def cli(self, *argv: str, timeout: float = 300, env: dict | None = None) -> None:
        log = self.logs / "cli.log"
        code = run_in_group([str(BIN / argv[0]), *argv[1:]], log, env or self.env, REPO, timeout)
        assert code == 0, f"{' '.join(argv)} exited {code}:\n{log.read_text()[-4000:]}"

    def up(self) -> None:
        self.servers.append(start(
            "prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)],
            self.ui, "/api/health", self.logs, self.env, REPO))
        self.servers.append(start(
            "mlflow-server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
                              "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
                              "--artifacts-destination", (self.tmp / "mlflow-artifacts").as_uri()],  # served (proxied) uploads
            self.mlflow, "/health", self.logs, self.env, REPO))
        self.cli("prefect", "work-pool", "create", POOL, "--type", "process")
        self.cli("prefect", "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "eve-local")
        self.deployment = self.get("/deployments/name/eve/eve-local")

    def down(self) -> None:
        for server in reversed(self.servers):
            stop(server)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One API call, again while the server answers 503: Prefect's server returns it when its
        sqlite is momentarily busy and calls it client-retryable (its own client retries)."""
        import time

        for attempt in range(5):
            response = httpx.request(method, f"{self.api}{path}", timeout=30, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(1 + attempt)
        return response

    def get(self, path: str):
        response = self._call("GET", path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict):
        response = self._call("POST", path, json=body)
        assert response.status_code < 300, response.text
        return response.json()

    def trigger_and_work(self, config: dict, until: str | None, worker_env: dict | None = None, timeout: float = 600) -> dict:
        """What the UI's Run button does, then one worker pass; returns the finished flow run."""
        flow_run = self.post(f"/deployments/{self.deployment['id']}/create_flow_run",
                             {"parameters": {"config": config, "until": until}})
        self.cli("prefect", "worker", "start", "--pool", POOL, "--type", "process", "--run-once",
                 timeout=timeout, env={**self.env, **(worker_env or {})})
        return self.get(f"/flow_runs/{flow_run['id']}")

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("prefect-it"))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def tiny_config(stack: Stack, *overrides: str) -> dict:
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"run.artifact_root={stack.tmp / 'artifacts'}", f"run.tracking_uri={stack.mlflow}", f"run.experiment={EXPERIMENT}",
        *overrides,
    ])
    return json_parameters(cfg)


def _stage_of(task_run: dict) -> str:
    return task_run["name"].rsplit("-", 1)[0]


# The pipeline's own stages (flows/stages.py); the evaluation stages after `student` are left out to
# keep this test within minutes on 2 cores (they run in tests/test_cli_run.py and `make run`).
UNTIL = "student"
RUN_STAGES = STAGES[: STAGES.index(UNTIL) + 1]
# scoring fails once, right after writing its first shard; the config gives scoring one retry
FAULT = {"W2S_FAIL_ONCE": "scoring:1"}
RETRY = ["orchestration.stage_retry={scoring: {retries: 1, delay_s: 1}}"]


@pytest.fixture(scope="module")
def two_runs(stack):
    """A cold run with a fault (retried), then the identical trigger again."""
    fault = {**FAULT, "W2S_FAULT_DIR": str(stack.tmp / "faults")}
    first = stack.trigger_and_work(tiny_config(stack, *RETRY), UNTIL, worker_env=fault)
    second = stack.trigger_and_work(tiny_config(stack, *RETRY), UNTIL)
    return first, second


def test_ui_triggered_run_completes_retries_the_failed_stage_and_reruns_all_cached(stack, two_runs):
    first, second = two_runs
    log = (stack.logs / "cli.log").read_text()[-6000:]
    assert first["state"]["type"] == "COMPLETED", log
    assert second["state"]["type"] == "COMPLETED", log
    cold = {_stage_of(t): t for t in stack.task_runs(first["id"])}
    warm = {_stage_of(t): t for t in stack.task_runs(second["id"])}
    assert set(cold) == set(warm) == set(RUN_STAGES)
    assert {name: t["state"]["name"] for name, t in cold.items()} == dict.fromkeys(RUN_STAGES, "Completed")
    assert {name: t["state"]["name"] for name, t in warm.items()} == dict.fromkeys(RUN_STAGES, "Cached")
    # the injected failure fired, and scoring alone ran twice
    assert (stack.tmp / "faults" / "fired-scoring-1").exists()
    assert {name: t["run_count"] for name, t in cold.items()} == {**dict.fromkeys(RUN_STAGES, 1), "scoring": 2}
    assert "InjectedFailure" in log or "injected failure" in (stack.logs / "cli.log").read_text()


def stage_table(client, flow_run: dict, tmp: Path) -> tuple[object, list[dict]]:
    """The flow run's MLflow parent run and its stage table (stages.json: stage, cache, wall_s,
    uri, mlflow_run_id: the run that computed the stage's artifact)."""
    import json

    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run['id']}'")
    (parent,) = [r for r in runs if "w2s.stage" not in r.data.tags]
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "stages.json", str(tmp))).read())
    return parent, [dict(zip(table["columns"], row)) for row in table["data"]]


def stage_runs(client, flow_run: dict, tmp: Path) -> dict[str, object]:
    """Each stage of the flow run → the MLflow run that computed its artifact (this flow run's or an earlier one's)."""
    _, rows = stage_table(client, flow_run, tmp)
    return {row["stage"]: client.get_run(row["mlflow_run_id"]) for row in rows}


def test_mlflow_runs_read_back_from_the_server(stack, two_runs):
    from mlflow.tracking import MlflowClient

    from w2s.artifacts import ArtifactStore

    first, second = two_runs
    client = MlflowClient(tracking_uri=stack.mlflow)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    computed = {}
    for flow_run, cache in ((first, "miss"), (second, "hit")):
        mine = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == flow_run["id"]]
        parent, rows = stage_table(client, flow_run, stack.tmp)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["prefect.flow_run_url"] == f"{stack.ui}/runs/flow-run/{flow_run['id']}"
        assert [row["stage"] for row in rows] == list(RUN_STAGES) and {row["cache"] for row in rows} == {cache}
        children = [r for r in mine if "w2s.stage" in r.data.tags]
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
        if cache == "hit":  # a cached rerun adds its parent run only; each row links to the run that computed the stage
            assert len(mine) <= 2 and children == [], [r.data.tags.get("w2s.stage") for r in mine]
            assert {row["stage"]: row["mlflow_run_id"] for row in rows} == computed
            continue
        finished = {r.data.tags["w2s.stage"]: r for r in children if r.info.status == "FINISHED"}
        assert set(finished) == set(RUN_STAGES)
        assert {r.data.tags["w2s.cache"] for r in finished.values()} == {cache}
        failed = [r.data.tags["w2s.stage"] for r in children if r.info.status == "FAILED"]
        assert failed == ["scoring"]
        computed = {stage: run.info.run_id for stage, run in finished.items()}
        assert {row["stage"]: row["mlflow_run_id"] for row in rows} == computed
    # what MLflow holds agrees with the artifact's own manifest
    weights = client.get_run(computed["weights"])
    store = ArtifactStore(str(stack.tmp / "artifacts"))
    manifest = store.read_manifest("weights", weights.data.tags["w2s.key"])
    assert weights.data.params["beta_over_lambda"] == "1.0"
    assert manifest.metrics and all(weights.data.metrics[k] == pytest.approx(v) for k, v in manifest.metrics.items())
    # artifacts go to the server's own (proxied) store, not to a path on the client's disk
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_offloaded_stage_runs_on_the_stage_deployment(stack, two_runs):
    """orchestration.offload: weights runs as a flow run of the stage deployment, on another pool
    and worker (here a process pool standing in for the GPU pool), and the parent run goes on with
    the artifact that run wrote; what it reads upstream is still Cached locally."""
    from mlflow.tracking import MlflowClient

    stack.cli("prefect", "work-pool", "create", "gpu-sim", "--type", "process")
    stack.cli("prefect", "--no-prompt", "deploy", "flows/offload.py:eve_stage", "--name", "eve-stage-sim", "--pool", "gpu-sim",
              "--no-enforce-parameter-schema")  # as deployments/prefect.yaml: eve-stage-gpu
    worker = spawn("gpu-sim-worker", [str(BIN / "prefect"), "worker", "start", "--pool", "gpu-sim", "--type", "process"],
                   stack.logs, stack.env, REPO)
    offload = "orchestration.offload={enabled: true, stages: [weights], deployment: eve-stage/eve-stage-sim}"
    try:
        parent = stack.trigger_and_work(tiny_config(stack, "weights.beta_over_lambda=3", offload), "weights")
    finally:
        # A polling worker left running writes to the server's sqlite and makes later UI posts meet
        # SQLITE_BUSY (a 503), so it goes as soon as its run is done.
        stop(worker)
    assert parent["state"]["type"] == "COMPLETED", (stack.logs / "cli.log").read_text()[-4000:] + worker.tail()
    local = {_stage_of(t): t["state"]["name"] for t in stack.task_runs(parent["id"]) if _stage_of(t) in RUN_STAGES}
    assert local == dict.fromkeys(RUN_STAGES[: RUN_STAGES.index("weights")], "Cached"), local  # no local weights
    remote = stack.post("/flow_runs/filter", {"deployments": {"name": {"any_": ["eve-stage-sim"]}}})
    assert len(remote) == 1 and remote[0]["state"]["type"] == "COMPLETED"
    assert remote[0]["parameters"]["stage"] == "weights"
    assert {_stage_of(t): t["state"]["name"] for t in stack.task_runs(remote[0]["id"])} == {"weights": "Completed"}
    # the remote stage's MLflow run sits under the parent flow run's MLflow run, with β/λ = 3
    client = MlflowClient(tracking_uri=stack.mlflow)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{parent['id']}'")
    weights = [r for r in runs if r.data.tags.get("w2s.stage") == "weights"]
    assert len(weights) == 1 and weights[0].data.params["beta_over_lambda"] == "3.0"
    assert weights[0].data.tags["w2s.cache"] == "miss" and weights[0].info.status == "FINISHED"
    parent_runs = [r for r in runs if "w2s.stage" not in r.data.tags]
    assert weights[0].data.tags["mlflow.parentRunId"] == parent_runs[0].info.run_id


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags that make Debian's chromium start cleanly as root on a machine with no outside network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Reads the value of a leaf field of Prefect's schema form, found by its label.
FORM_VALUES = r"""labels => labels.map(text => {
  const span = [...document.querySelectorAll('.schema-form-property__label')]
    .find(s => s.textContent.replace(/\(Optional\)/, '').trim() === text);  // first in form order
  if (!span) return null;
  const input = span.closest('.schema-form-property').querySelector('.p-label__body input, .p-label__body select, .p-label__body textarea');
  return input ? input.value : null;
})"""


@pytest.fixture
def browser_page(tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def _dismiss_popup(page) -> None:
    """The community sign-up pop-up a fresh server shows once."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()


def _screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / ".gitignore").write_text("*\n")  # test output, never committed
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _submit_run_form(page, attempts: int = 4):
    """Clicks Submit, and again while the server answers 503. Prefect's server returns 503 when its
    sqlite is momentarily busy (SQLITE_BUSY_SNAPSHOT under WAL fails at once, whatever the busy
    timeout) and calls that client-retryable: its Python client retries, its UI leaves the form
    filled in for the user to submit again, which is what this does."""
    for attempt in range(attempts):
        with page.expect_response(lambda r: r.url.endswith("/create_flow_run"), timeout=60_000) as created:
            page.get_by_role("button", name="Submit").click()
        if created.value.status != 503:
            break
        page.wait_for_timeout(2_000 * (attempt + 1))
    return created.value


def test_prefect_ui_shows_typed_form_and_every_stage(stack, two_runs, browser_page):
    from w2s.config import PipelineConfig

    page = browser_page
    # The deployment's custom-run form: typed fields of the pydantic config, defaulting to
    # pipeline_config.yaml (48 student prompts there, 128 in the schema defaults).
    embedded = load_config(REPO / "pipeline_config.yaml")
    assert embedded.data.n_student != PipelineConfig().data.n_student
    page.goto(f"{stack.ui}/deployments/deployment/{stack.deployment['id']}/run", wait_until="networkidle", timeout=120_000)
    page.wait_for_selector(".schema-form-property__label", timeout=60_000)
    labels = ["N Student", "N Preference", "Artifact Root", "Beta Over Lambda"]  # data.*, run.*, weights.*
    values = page.evaluate(FORM_VALUES, labels)
    assert values == [str(embedded.data.n_student), str(embedded.data.n_preference), embedded.run.artifact_root,
                      f"{embedded.weights.beta_over_lambda:g}"], values
    assert page.locator("input[type=number]").count() > 20  # a typed form, not one JSON box
    _dismiss_popup(page)
    _screenshot(page, "prefect-ui-run-form.png")
    # Submitting the form as it stands (the UI's Run) gives parameters that the flow reads back as
    # exactly pipeline_config.yaml. The run is deleted unexecuted: the form is what is under test.
    created = _submit_run_form(page)
    assert created.status == 201, created.text()
    ui_run = stack.get(f"/flow_runs/{created.json()['id']}")
    stack._call("DELETE", f"/flow_runs/{ui_run['id']}").raise_for_status()
    assert ui_run["deployment_id"] == stack.deployment["id"]
    assert PipelineConfig.model_validate(ui_run["parameters"]["config"]) == embedded

    # The first flow run's page lists every stage (Task Runs tab) and shows the run Completed.
    first, _ = two_runs
    page.goto(f"{stack.ui}/runs/flow-run/{first['id']}", wait_until="networkidle", timeout=120_000)
    _dismiss_popup(page)
    page.get_by_text("Task Runs", exact=True).first.click()
    page.wait_for_selector(f"text={len(RUN_STAGES)} Task runs", timeout=60_000)
    listed = page.locator("a", has_text="-").all_inner_texts()
    shown = {name.rsplit("-", 1)[0] for name in listed if name.rsplit("-", 1)[0] in RUN_STAGES}
    assert shown == set(RUN_STAGES), listed
    assert page.get_by_text("Completed").count() >= len(RUN_STAGES)
    _screenshot(page, "prefect-ui-flow-run.png")


@pytest.fixture(scope="module")
def whole_run(stack, two_runs):
    """The whole flow (evaluations, ceiling, report) on top of the cached first stages."""
    return stack.trigger_and_work(tiny_config(stack, *RETRY), None)


def _artifacts(stack, flow_run_id: str) -> list[dict]:
    return stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})


def test_the_flow_run_shows_the_report_stage_table_progress_mlflow_link_and_project_logs(stack, two_runs, whole_run):
    import json

    from mlflow.tracking import MlflowClient

    first, _ = two_runs
    assert whole_run["state"]["type"] == "COMPLETED", (stack.logs / "cli.log").read_text()[-4000:]
    found = {a["key"]: a for a in _artifacts(stack, whole_run["id"]) if a["key"]}
    report = found["report"]
    assert report["type"] == "markdown" and "| policy |" in report["data"] and "**EVE: PGR" in report["data"]
    # figures stay images, served by the MLflow server from the report stage's run
    figures = re.findall(r"!\[([^\]]*)\]\((http[^)]+)\)", report["data"])
    assert "pgr_bars" in {name for name, _ in figures}, report["data"][:2000]
    for name, url in figures:
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/png"), (name, response.headers)
    table = json.loads(found["stage-table"]["data"]) if isinstance(found["stage-table"]["data"], str) else found["stage-table"]["data"]
    assert [row["stage"] for row in table] == list(STAGES) and {row["cache"] for row in table} == {"hit", "miss"}
    assert all(row["artifact"].startswith(str(stack.tmp / "artifacts")) and row["mlflow_run"] for row in table)
    client = MlflowClient(tracking_uri=stack.mlflow)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{whole_run['id']}'")
    parent = next(r for r in runs if "w2s.stage" not in r.data.tags)
    link = found["mlflow-run"]
    # Prefect stores a link artifact as markdown: [text](url)
    assert link["data"] == (f"[MLflow parent run]({stack.mlflow}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                            "?workflowType=machine_learning)")
    # progress artifacts of the long stages the cold run computed, ending at 100 %
    cold = {a["key"]: a for a in _artifacts(stack, first["id"]) if a["key"]}
    for key in ("progress-sampling", "progress-scoring", "progress-weak-sft", "progress-student"):
        assert cold[key]["type"] == "progress" and float(cold[key]["data"]) == pytest.approx(100.0), key
    # Prefect's run graph: an edge from a producing task run for every artifact input of every stage
    from collections import Counter

    from w2s.artifacts import ArtifactStore

    task_runs = stack.task_runs(whole_run["id"])
    stage_of = {t["id"]: _stage_of(t) for t in task_runs}
    keys = {row["stage"]: row["artifact"].rstrip("/").rsplit("/", 1)[1] for row in table}
    store = ArtifactStore(str(stack.tmp / "artifacts"))
    for t in task_runs:
        stage = _stage_of(t)
        wanted = Counter(name.split(".")[0] for name in store.read_manifest(stage, keys[stage]).inputs)
        drawn = Counter({arg: len({i["id"] for i in found if i.get("input_type") == "task_run" and i["id"] in stage_of})
                         for arg, found in t["task_inputs"].items()})
        assert all(drawn[arg] >= n for arg, n in wanted.items()), (stage, wanted, drawn)
    # the project's own loggers reach the run's logs (one line per finished stage)
    logs = stack.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [whole_run["id"]]}}, "limit": 200})
    assert any(log["name"] == "w2s.stages" and log["message"].startswith("report") for log in logs)


def test_mlflow_shows_lineage_tables_system_metrics_and_registered_policies(stack, two_runs, whole_run):
    import json

    from mlflow.tracking import MlflowClient

    from w2s.artifacts import ArtifactStore

    first, _ = two_runs
    client = MlflowClient(tracking_uri=stack.mlflow)
    store = ArtifactStore(str(stack.tmp / "artifacts"))

    cold, whole = stage_runs(client, first, stack.tmp), stage_runs(client, whole_run, stack.tmp)
    # the headline on the parent run (the runs table compares it across runs); fig. 3's curve by step
    parent, _ = stage_table(client, whole_run, stack.tmp)
    assert {"pgr/eve", "pgr/naive_sft"} <= set(parent.data.metrics), sorted(parent.data.metrics)
    curve = client.get_metric_history(whole["evaluate_naive_sft"].info.run_id, "checkpoint/gold_reward")
    assert len({m.step for m in curve}) >= 2, curve
    # dataset inputs: each input of scoring, with the digest of that input's manifest
    scoring = store.read_manifest("scoring", cold["scoring"].data.tags["w2s.key"])
    inputs = {t.value: d.dataset for d in cold["scoring"].inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert set(inputs) == set(scoring.inputs) == {"samples", "weak", "weak_ref"}
    for name, dataset in inputs.items():
        assert dataset.digest == scoring.inputs[name][:36] and json.loads(dataset.profile)["digest"] == scoring.inputs[name]
    # system metrics on a training run; a logged table per evaluation
    assert any(k.startswith("system/cpu") for k in cold["weak_sft"].data.metrics)
    evaluations = [s for s in whole if s.startswith("evaluate_")]
    assert evaluations
    for name in evaluations:
        assert "evaluation_samples.json" in {f.path for f in client.list_artifacts(whole[name].info.run_id)}, name
    # the weak teacher, the student and the ceiling registered by reference to their artifacts
    for label, stage in (("weak", "weak_dpo"), ("eve", "student"), ("strong_ceiling", "strong_dpo")):
        version = client.get_model_version_by_alias(f"w2s-{label}", "newest")
        key = whole[stage].data.tags["w2s.key"]
        assert version.tags["w2s.key"] == key and version.tags["w2s.uri"] == store.uri(stage, key) + "/model"
        # a local root behind a tracking server: the source is a pointer file in the stage run
        pointer = json.loads(open(client.download_artifacts(version.run_id, "w2s-model/pointer.json", str(stack.tmp))).read())
        assert version.source.startswith("runs:/") and pointer["uri"] == version.tags["w2s.uri"]


def test_screenshots_of_the_artifacts_tab_the_mlflow_run_and_the_report(stack, whole_run, browser_page):
    from mlflow.tracking import MlflowClient

    page = browser_page
    page.goto(f"{stack.ui}/runs/flow-run/{whole_run['id']}", wait_until="networkidle", timeout=120_000)
    _dismiss_popup(page)
    page.get_by_text("Artifacts", exact=True).first.click()
    page.wait_for_selector("text=stage-table", timeout=60_000)
    assert page.get_by_text("mlflow-run").count() and page.get_by_text("report").count()
    _screenshot(page, "prefect-ui-artifacts.png")

    client = MlflowClient(tracking_uri=stack.mlflow)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{whole_run['id']}'")
    report_run = next(r for r in runs if r.data.tags.get("w2s.stage") == "report")
    # MLflow's UI keeps polling, so the page never goes network-idle: wait for what it renders
    page.goto(f"{stack.mlflow}/#/experiments/{experiment.experiment_id}/runs/{report_run.info.run_id}", wait_until="load",
              timeout=120_000)
    page.wait_for_selector(f"text={report_run.info.run_id}", timeout=60_000)
    page.wait_for_timeout(2_000)
    _screenshot(page, "mlflow-run.png")

    page.goto(Path(report_run.data.tags["w2s.uri"], "report.html").as_uri(), wait_until="load")
    assert page.locator("table").count() >= 2 and page.locator("th", has_text="policy").count() == 1
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 100 for w in widths), widths  # every figure decodes
    assert "**" not in page.inner_text("body")
    _screenshot(page, "report-html.png")


def test_a_flow_run_starts_through_the_image_entrypoint_as_prefects_workers_start_a_container(stack):
    """Kubernetes and Docker workers render the pool's job template and hand the container the job's
    `command` as its arguments (Prefect's BaseJobConfiguration.prepare_for_flow_run; the GPU pool's
    template, deployments/k8s-gpu-job-template.json, puts it in `args`). No container engine or
    cluster runs here, so docker/entrypoint.sh runs directly with that argv and env, in the repository
    (the image's /app): the flow run must reach Completed. The old ENTRYPOINT ["w2s"] turned the same
    argv into `w2s prefect flow-run execute`, which exits 2 and never starts the run."""
    import asyncio
    import json
    import shlex

    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((REPO / "deployments" / "k8s-gpu-job-template.json").read_text())
    job_env = {"W2S_ARTIFACT_ROOT": str(stack.tmp / "artifacts-entrypoint"), "W2S_TRACKING_URI": stack.mlflow}
    job = asyncio.run(BaseJobConfiguration.from_template_and_values(template, {"env": job_env}))
    created = stack.post(f"/deployments/{stack.deployment['id']}/create_flow_run",
                         {"parameters": {"config": tiny_config(stack), "until": "data"}})
    job.prepare_for_flow_run(FlowRun.model_validate(created))
    argv = shlex.split(job.command)
    assert argv == ["prefect", "flow-run", "execute"]
    # the job's own variables and the flow run's id; the server's address as the pool's env would give it
    env = {**stack.env, **{k: v for k, v in job.env.items() if v is not None and not k.startswith("PREFECT_")},
           "PREFECT__FLOW_RUN_ID": job.env["PREFECT__FLOW_RUN_ID"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    assert env["PREFECT__FLOW_RUN_ID"] == created["id"]

    old = run_in_group([str(BIN / "w2s"), *argv], stack.logs / "old-entrypoint.log", env, REPO, timeout=120)
    assert old == 2 and "invalid choice: 'prefect'" in (stack.logs / "old-entrypoint.log").read_text()
    assert stack.get(f"/flow_runs/{created['id']}")["state"]["type"] == "SCHEDULED"  # never started

    log = stack.logs / "entrypoint.log"
    code = run_in_group(["sh", str(REPO / "docker" / "entrypoint.sh"), *argv], log, env, REPO, timeout=600)
    assert code == 0, log.read_text()[-4000:]
    finished = stack.get(f"/flow_runs/{created['id']}")
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    assert any((stack.tmp / "artifacts-entrypoint" / "data").glob("*/manifest.json"))  # the job's W2S_ARTIFACT_ROOT
