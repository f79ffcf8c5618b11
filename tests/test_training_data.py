"""Bad training input fails before training with the shard and row named; masking is exact."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from w2s.config import TrainConfig
from w2s.models.build import byte_level_tokenizer
from w2s.training.data import IGNORE, DataError, batch_indices, collate, load_data


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


def _shard(tmp_path, name="s.parquet", **columns):
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def _load(path, tok, kind="completion", **cfg):
    return load_data([path], kind, tok, TrainConfig(batch_size=1, micro_batch_size=1, **cfg), None)


@pytest.mark.parametrize(
    "weights, message",
    [([1.0, float("nan")], "row 1: weight is nan"), ([1.0, -0.5], "row 1: weight is -0.5"),
     ([0.0, 0.0], "all 2 weights are zero"), ([1.0, float("inf")], "row 1: weight is inf")],
)
def test_bad_weights_name_shard_and_row(tmp_path, tok, weights, message):
    path = _shard(tmp_path, prompt=["a", "b"], completion=["x", "y"], weight=weights)
    with pytest.raises(DataError, match=message) as info:
        _load(path, tok)
    assert "weights are zero" in message or str(path) in str(info.value)


def test_missing_column_and_empty_data(tmp_path, tok):
    path = _shard(tmp_path, prompt=["a"], answer=["x"])
    with pytest.raises(DataError, match=r"s\.parquet: missing column\(s\) \['completion'\]"):
        _load(path, tok)
    empty = _shard(tmp_path, "e.parquet", prompt=pa.array([], pa.string()), completion=pa.array([], pa.string()))
    with pytest.raises(DataError, match="no rows"):
        _load(empty, tok)
    pairs = _shard(tmp_path, "p.parquet", prompt=["a"], chosen=["x"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['rejected'\]"):
        _load(pairs, tok, kind="pair")


def test_null_and_empty_text(tmp_path, tok):
    path = _shard(tmp_path, prompt=["a", None], completion=["x", "y"])
    with pytest.raises(DataError, match="row 1: column 'prompt' is NoneType"):
        _load(path, tok)
    path = _shard(tmp_path, "c.parquet", prompt=["a", "b"], completion=["x", ""])
    with pytest.raises(DataError, match="c.parquet: row 1: column 'completion' is empty"):
        _load(path, tok)


def test_overlong_error_or_truncate_and_count(tmp_path, tok):
    path = _shard(tmp_path, prompt=["p: ", "p: "], completion=["short", "x" * 40])
    with pytest.raises(DataError, match=r"s\.parquet: row 1: 44 tokens > max length 20"):
        _load(path, tok, max_seq_len=20, on_overlong="error")
    data = _load(path, tok, max_seq_len=20, on_overlong="truncate")
    assert data.n_truncated == 1 and data.stats["truncated"] == 1
    assert [len(s.ids) for s in data.sequences] == [3 + 5 + 1, 20]
    long_prompt = _shard(tmp_path, "l.parquet", prompt=["q" * 30], completion=["x"])
    with pytest.raises(DataError, match=r"row 0: the prompt alone has 30 tokens"):
        _load(long_prompt, tok, max_seq_len=20)


def test_labels_cover_exactly_the_completion_and_eos(tmp_path, tok):
    path = _shard(tmp_path, prompt=["ab", "abcd"], completion=["xyz", "w"], finish_reason=["stop", "length"])
    data = _load(path, tok)
    batch = collate(data.sequences, pad_id=tok.pad_token_id)
    eos = tok.eos_token_id
    # byte-level tokenizer: one token per character, so positions are known independently
    expected0 = tok.convert_tokens_to_ids(list("xyz")) + [eos]
    assert batch["labels"][0].tolist() == [IGNORE] * 2 + expected0
    # finish_reason 'length': the completion was cut, so it must not learn to stop there
    assert batch["labels"][1].tolist() == [IGNORE] * 5 + tok.convert_tokens_to_ids(["w"])  # left-padded
    assert batch["attention_mask"][1].tolist() == [0] + [1] * 5
    assert batch["position_ids"][1].tolist() == [0, 0, 1, 2, 3, 4]
    no_eos = _load(path, tok, append_eos=False)
    assert no_eos.sequences[0].n_completion == 3


def test_data_order_is_a_function_of_seed_and_step():
    seen = [batch_indices(s, 10, 5, seed=3) for s in range(4)]
    assert sorted(seen[0] + seen[1]) == list(range(10)) and sorted(seen[2] + seen[3]) == list(range(10))
    assert seen[0] != seen[2]  # a new permutation each epoch
    assert batch_indices(3, 10, 5, seed=3) == seen[3]
    assert batch_indices(0, 10, 5, seed=4) != seen[0]
    with pytest.raises(DataError, match="fewer than batch_size"):
        batch_indices(0, 3, 5, seed=0)
    assert math.isfinite(sum(seen[0]))


def test_empty_completion_that_stopped_is_a_sample_of_one_eos_token(tmp_path, tok):
    path = _shard(tmp_path, prompt=["ab", "cd"], completion=["", "x"], finish_reason=["stop", "stop"])
    data = _load(path, tok)
    assert data.sequences[0].n_completion == 1 and data.sequences[0].ids[-1] == tok.eos_token_id
    cut = _shard(tmp_path, "cut.parquet", prompt=["ab"], completion=[""], finish_reason=["length"])
    with pytest.raises(DataError, match="row 0: column 'completion' is empty"):
        _load(cut, tok)
