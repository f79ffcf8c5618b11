"""A remote artifact root, for real: an S3-compatible server on 127.0.0.1 (moto's server mode, which
s3fs tests itself against) and s3fs. configs/tiny.yaml runs end to end on s3://; SIGKILLed mid-
sampling and mid-training, the reruns reuse the finished shards and checkpoints from the bucket and
end with manifests identical to a local run's; a rerun from another working directory with a
fresh Prefect home (another machine, as far as Prefect knows) shows the stages Cached, and reads
none of the code-running cache records a writer of the bucket planted beside them."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.cli_runs import STAGES, child_env, finish, start, tiny_run_args
from tests.cli_runs import run_tiny as _run
from tests.cli_runs import stage_table as _table
from tests.payloads import prefect_records
from tests.test_flow_resume import _digests

pytestmark = pytest.mark.slow
BUCKET = "w2s-test"  # made by the s3 fixture (tests/conftest.py)


def _remote_run(cwd, env, root, die_at=None, prefect_home=None):
    extra = {**env, "W2S_STAGING_DIR": str(cwd / "staging")}  # each "pod" stages on its own disk
    if prefect_home is not None:
        extra |= {"PREFECT_HOME": str(prefect_home), "PREFECT_LOCAL_STORAGE_PATH": str(prefect_home / "storage"),
                  "PREFECT_LOGGING_LEVEL": "INFO"}
    args = tiny_run_args(root, "--set", f"run.tracking_uri=sqlite:///{cwd.parent}/mlflow.db")
    done = finish(start(args, cwd, child_env(die_at, **extra), cwd / "log"), cwd / "log")
    return done.returncode, done.stdout, done.stderr


def _remote_manifests(env, root):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
    found = {}
    for stage in STAGES:
        paths = fs.glob(f"{root.removeprefix('s3://')}/{stage}/*/manifest.json")
        assert len(paths) == 1, (stage, paths)
        found[stage] = json.loads(fs.cat_file(paths[0]))
    return found


def _records_planted(env, root, manifests, records) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
    planted = []
    for n, (stage, manifest) in enumerate(manifests.items()):
        path = f"{root.removeprefix('s3://')}/_prefect/results/w2s-{stage}-{manifest['key']}"
        fs.pipe_file(path, records[n % len(records)])
        planted.append(path)
    return planted


def test_tiny_pipeline_on_s3_survives_kills_and_matches_a_local_run(tmp_path, s3):
    local = _run(tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    root = f"s3://{BUCKET}/run"

    code, _, err = _remote_run(tmp_path / "pod-1", s3, root, die_at="sampling:1")
    assert code == -signal.SIGKILL, err[-3000:]
    code, _, err = _remote_run(tmp_path / "pod-2", s3, root, die_at="student:2")  # a fresh staging folder
    assert code == -signal.SIGKILL, err[-3000:]
    code, out, err = _remote_run(tmp_path / "pod-3", s3, root)
    assert code == 0, err[-3000:]
    assert _table(out)["student"] == "miss" and _table(out)["sampling"] == "hit"

    manifests = _remote_manifests(s3, root)
    assert {stage: m["digest"] for stage, m in manifests.items()} == _digests(tmp_path / "local")
    assert manifests["sampling"]["metrics"]["shards_reused"] >= 1  # pod-2 reused pod-1's shard from the bucket
    assert manifests["student"]["info"]["resumed_from_step"] == 2  # pod-3 resumed pod-2's state from the bucket

    # another machine as far as Prefect knows: new working directory, new Prefect home; a writer
    # of the bucket planted Prefect records under the names the earlier design gave them
    pwned = tmp_path / "pwned"
    plant = _records_planted(s3, root, manifests, prefect_records(pwned, tmp_path / "modules"))
    env = {**s3, "PYTHONPATH": os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")])}
    code, out, err = _remote_run(tmp_path / "pod-4", env, root, prefect_home=tmp_path / "other-prefect-home")
    assert code == 0, err[-3000:]
    assert plant and not pwned.exists(), "a planted cache record was read"
    assert set(_table(out).values()) == {"hit"}
    # Prefect's task lines are in the run's log file (a local temp folder for an s3:// root)
    log = next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("log: "))
    prefect_lines = open(log).read()
    cached = [line for line in prefect_lines.splitlines() if "Task run" in line and "Finished in state Cached" in line]
    assert len(cached) == len(STAGES), prefect_lines[-3000:]  # from the manifests on the bucket
