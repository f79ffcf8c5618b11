"""E1: split sizes are checked against the data, by one rule (w2s/data/capacity.py), at `w2s config
validate` on a local copy and in the data stage. The copy is scripts/make_tldr_fixture.py's: the two
CarperAI datasets' schemas, layout and real row counts."""

from __future__ import annotations

import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from w2s.config.loading import load_config

sys.path.insert(0, str(REPO / "scripts"))
import make_tldr_fixture  # noqa: E402

TLDR = REPO / "configs" / "tldr_llama3b.yaml"
PAIRS, OVERLAP = 4, 0.1


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    out = tmp_path_factory.mktemp("tldr-full")
    counts = make_tldr_fixture.make(out, pairs_per_post=PAIRS, overlap=OVERLAP)
    return out, counts


def _local(out, tmp_path):
    return [f"run.artifact_root={tmp_path / 'root'}", f"run.tracking_uri=sqlite:///{tmp_path / 'root' / 'mlflow.db'}",
            f"data.hf.path={out / 'openai_summarize_comparisons'}", f"data.hf.prompts.path={out / 'openai_summarize_tldr'}",
            # hub model ids cannot be checked offline; the data check is what is under test
            "models.weak={source: tiny_random}", "models.strong={source: tiny_random}",
            f"models.gold_reward={{kind: hf_classifier, path: {out}}}"]


def _validate(sets):
    args = [sys.executable, "-m", "w2s.cli", "config", "validate", str(TLDR), *(f"--set={s}" for s in sets)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_the_fixture_has_the_hub_row_counts(full_size):
    out, counts = full_size
    assert counts["openai_summarize_comparisons"] == {"train": 92_534, "test": 83_629, "valid1": 33_082, "valid2": 50_715}
    assert counts["openai_summarize_tldr"] == {"train": 116_722, "valid": 6_447, "test": 6_553}
    train = pq.read_table(out / "openai_summarize_comparisons" / "data" / "train-00000-of-00001.parquet")
    assert train.column_names == ["prompt", "chosen", "rejected"] and train.num_rows == 92_534
    assert str(train.column("chosen")[0]).startswith("TL;DR: ") and "TL;DR" not in str(train.column("prompt")[0])


def test_validate_passes_the_paper_config_on_the_real_sizes(full_size, tmp_path):
    out, _ = full_size
    done = _validate(_local(out, tmp_path))
    assert done.returncode == 0, done.stderr
    distinct = math.ceil(92_534 / PAIRS)
    pool = 116_722 - round(116_722 * OVERLAP)  # the shared posts are preference posts: excluded
    assert f"92,534 preference rows ({distinct:,} prompts), {pool:,} prompts for the prompt splits" in done.stdout
    assert not (tmp_path / "root").exists()  # validate writes nothing


@pytest.mark.parametrize("sets, message", [
    (["data.n_preference=92535"], "data.n_preference = 92,535 pairs, but '{cmp}' split 'train' has 92,534 rows"),
    (["data.n_student=100000"], "data: n_weak_demo + n_exemplar_pool + n_student + n_test = 110,320 prompts, but "
                                "'{tldr}' split 'train' has 105,050 distinct prompts outside the preferences"),
    (["data.hf.prompts=null"], "data: n_preference + n_weak_demo + n_exemplar_pool + n_student + n_test = 112,320 distinct "
                               "prompts, but '{cmp}' split 'train' has 23,134 (92,534 rows); lower them or set data.hf.prompts"),
])
def test_validate_fails_in_one_line_when_the_splits_do_not_fit(full_size, tmp_path, sets, message):
    out, _ = full_size
    done = _validate(_local(out, tmp_path) + sets)
    expected = "w2s: error: " + message.format(cmp=out / "openai_summarize_comparisons", tldr=out / "openai_summarize_tldr")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [expected]


def test_data_stage_splits_a_prompt_source_disjoint_from_the_preferences(tmp_path):
    from w2s.data.splits import build_tables

    out = tmp_path / "small"
    make_tldr_fixture.make(out, scale=0.01, pairs_per_post=PAIRS, overlap=0.5)
    sizes = {"n_preference": 900, "n_weak_demo": 300, "n_exemplar_pool": 8, "n_student": 200, "n_test": 64}
    cfg = load_config(TLDR, _local(out, tmp_path) + [f"data.{k}={v}" for k, v in sizes.items()]).data
    tables = build_tables(cfg)
    assert {k: t.num_rows for k, t in tables.items()} == {
        "preferences": 900, "weak_demo": 300, "exemplar": 8, "student": 200, "test": 64}
    prefs = tables["preferences"].to_pydict()
    assert len(set(prefs["prompt"])) < 900  # several pairs per post
    source = pq.read_table(out / "openai_summarize_comparisons" / "data" / "train-00000-of-00001.parquet").to_pydict()
    comparison_posts = {f"{p.rstrip()}\nTL;DR:" for p in source["prompt"]}
    seen = set()
    for split in ("weak_demo", "exemplar", "student", "test"):
        prompts = tables[split].column("prompt").to_pylist()
        assert len(set(prompts)) == len(prompts) and not seen & set(prompts)
        assert not comparison_posts & set(prompts)  # no post of D_golden's split in a prompt split
        seen |= set(prompts)
    assert all(p.endswith("\nTL;DR:") for p in prefs["prompt"] + list(seen))
    assert all(c.startswith(" ") and not c.lstrip().startswith("TL;DR") for c in prefs["chosen"] + prefs["rejected"])
    ids = [i for t in tables.values() for i in t.column("prompt_id").to_pylist()]
    assert len(set(ids)) == len(ids)


def test_data_stage_and_validate_raise_the_same_line(tmp_path):
    from w2s.data.capacity import check_local_data
    from w2s.data.splits import build_tables

    out = tmp_path / "small"
    make_tldr_fixture.make(out, scale=0.01, pairs_per_post=PAIRS, overlap=0.1)
    cfg = load_config(TLDR, _local(out, tmp_path) + ["data.n_preference=926"]).data  # 925 rows at 1 %
    with pytest.raises(ValueError) as at_validate:
        check_local_data(cfg)
    with pytest.raises(ValueError) as at_stage:
        build_tables(cfg)
    assert str(at_validate.value) == str(at_stage.value) and "925 rows" in str(at_stage.value)
