"""Training data: Parquet shards -> validated, tokenised examples -> padded micro-batches.

Two table shapes:
  completion (sft, weighted_mle): `prompt`, `completion`, optional `weight` (F_i, default 1) and
      optional `finish_reason` (a completion cut at max_tokens gets no EOS appended);
  pair (dpo): `prompt`, `chosen`, `rejected`.

Each text is tokenised twice, the prompt alone and prompt+completion; the joint sequence's tokens up
to its longest common prefix with the prompt's are masked out of the loss (label -100) — the same
boundary scoring uses (w2s/text.py), so a BPE merge across the boundary is a completion token in
both and the student learns exactly the tokens whose log-prob the teacher scored. Every problem in the input (missing
columns, empty data, null/empty text, NaN/negative/all-zero weights, overlong rows under
on_overlong='error') raises `DataError` naming the shard and row, before any training starts.

The order of examples is a pure function of (seed, epoch), so a resumed run needs only the step
number to see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from w2s.config import TrainConfig
from w2s.text import completion_start

COMPLETION_COLUMNS = ("prompt", "completion")
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
IGNORE = -100


class DataError(ValueError):
    """Bad training input; the message names the shard and row."""


@dataclass
class Tokenised:
    """One tokenised prompt+completion: ids, and how many leading ids are prompt (masked)."""

    ids: list[int]
    n_prompt: int

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass
class TrainData:
    kind: str  # "completion" | "pair"
    sequences: list[Tokenised]  # completion: one per row; pair: chosen then rejected per row
    weights: list[float]
    sources: list[tuple[str, int]]  # (shard, row) of each example, for messages
    n_truncated: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sources)

    def pair(self, i: int) -> tuple[Tokenised, Tokenised]:
        return self.sequences[2 * i], self.sequences[2 * i + 1]


def _read_shard(path: str, columns: Sequence[str], optional: Sequence[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise DataError(f"{path}: shard not found") from None
    except (pa.ArrowException, OSError) as exc:  # empty, truncated, or another format
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {schema.names}")
    wanted = list(columns) + [c for c in optional if c in schema.names]
    return pq.read_table(path, columns=wanted).to_pydict()


def _check_text(value, shard: str, row: int, column: str, may_be_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"{shard}: row {row}: column '{column}' is {type(value).__name__}, expected text")
    if column != "prompt" and not value and not may_be_empty:
        raise DataError(f"{shard}: row {row}: column '{column}' is empty")
    return value


def _check_weight(value, shard: str, row: int) -> float:
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        raise DataError(f"{shard}: row {row}: weight is {value!r} (NaN or missing)")
    if math.isinf(value) or value < 0:
        raise DataError(f"{shard}: row {row}: weight is {value}; weights must be finite and >= 0")
    return float(value)


def read_rows(data_files: Sequence[str | Path], kind: str) -> tuple[dict[str, list], list[tuple[str, int]]]:
    """Concatenated, validated columns of every shard plus (shard, row) of each row."""
    if not data_files:
        raise DataError("no data files given")
    columns = COMPLETION_COLUMNS if kind == "completion" else PAIR_COLUMNS
    optional = ("weight", "finish_reason") if kind == "completion" else ()
    out: dict[str, list] = {c: [] for c in (*columns, "weight", "finish_reason")}
    sources: list[tuple[str, int]] = []
    for path in map(str, data_files):
        table = _read_shard(path, columns, optional)
        n = len(table[columns[0]])
        finish = table.get("finish_reason", [None] * n)
        for row in range(n):
            for c in columns:
                # A sample that stopped at once is a real sample: its only token is the EOS
                # (_fit still rejects it when append_eos is off and nothing would be learned).
                out[c].append(_check_text(table[c][row], path, row, c, may_be_empty=c == "completion" and finish[row] == "stop"))
            out["weight"].append(_check_weight(table["weight"][row], path, row) if "weight" in table else 1.0)
            out["finish_reason"].append(finish[row])
            sources.append((path, row))
    if kind == "pair":
        same = next((i for i, (c, r) in enumerate(zip(out["chosen"], out["rejected"])) if c == r), None)
        if same is not None:  # its two log-ratios cancel: a pair that teaches nothing, most likely a data bug
            raise DataError(f"{sources[same][0]}: row {sources[same][1]}: chosen and rejected are the same text")
    if not sources:
        raise DataError(f"no rows in {len(data_files)} shard(s): {[str(p) for p in data_files][:3]}")
    if kind == "completion" and not any(w > 0 for w in out["weight"]):
        raise DataError(f"all {len(sources)} weights are zero in {[str(p) for p in data_files][:3]}: nothing to train on")
    return out, sources


def _tokenise(tokenizer, prompts: list[str], completions: list[str], eos: list[bool]) -> list[Tokenised]:
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=True)["input_ids"]
    eos_id = tokenizer.eos_token_id
    seqs = []
    for p, f, add_eos in zip(prompt_ids, full_ids, eos):
        ids = list(f) + ([eos_id] if add_eos and eos_id is not None else [])
        seqs.append(Tokenised(ids=ids, n_prompt=completion_start(p, f)))
    return seqs


def _fit(seq: Tokenised, max_len: int, on_overlong: str, where: tuple[str, int]) -> bool:
    """Applies the overlong policy in place; True when the sequence was truncated."""
    if len(seq.ids) <= max_len:
        if seq.n_completion <= 0:
            raise DataError(f"{where[0]}: row {where[1]}: completion has no tokens of its own")
        return False
    if on_overlong == "error":
        raise DataError(
            f"{where[0]}: row {where[1]}: {len(seq.ids)} tokens > max length {max_len} (on_overlong='error')"
        )
    if seq.n_prompt >= max_len:
        raise DataError(
            f"{where[0]}: row {where[1]}: the prompt alone has {seq.n_prompt} tokens >= max length {max_len}; "
            "no completion token would remain"
        )
    seq.ids = seq.ids[:max_len]
    return True


def load_data(data_files: Sequence[str | Path], kind: str, tokenizer, cfg: TrainConfig, model_max_len: int | None) -> TrainData:
    """Reads, validates and tokenises every shard; raises DataError before any training."""
    rows, sources = read_rows(data_files, kind)
    max_len = min(cfg.max_seq_len, model_max_len or cfg.max_seq_len)
    prompts = rows["prompt"]
    if kind == "completion":
        eos = [cfg.append_eos and fr != "length" for fr in rows["finish_reason"]]
        seqs = _tokenise(tokenizer, prompts, rows["completion"], eos)
        where = sources
    else:
        chosen = _tokenise(tokenizer, prompts, rows["chosen"], [cfg.append_eos] * len(prompts))
        rejected = _tokenise(tokenizer, prompts, rows["rejected"], [cfg.append_eos] * len(prompts))
        seqs = [s for pair in zip(chosen, rejected) for s in pair]
        where = [w for w in sources for _ in range(2)]
    truncated = sum(_fit(s, max_len, cfg.on_overlong, w) for s, w in zip(seqs, where))
    n_tokens = [len(s.ids) for s in seqs]
    stats = {
        "rows": float(len(sources)),
        "truncated": float(truncated),
        "max_len": float(max_len),
        "mean_tokens": sum(n_tokens) / len(n_tokens),
        "completion_tokens": float(sum(s.n_completion for s in seqs)),
    }
    return TrainData(kind, seqs, rows["weight"], sources, truncated, stats)


# --------------------------------------------------------------------------------------- ordering
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of epoch `epoch`: a function of (seed, epoch) only (exact resume)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only: a short last batch would change the loss normaliser from step to step."""
    if n < batch_size:
        raise DataError(f"{n} rows are fewer than batch_size {batch_size}: not one full batch")
    return n // batch_size


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, position = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[position * batch_size : (position + 1) * batch_size]


# --------------------------------------------------------------------------------------- batching
def collate(seqs: Sequence[Tokenised], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ids, attention mask, position ids, and labels with prompt and padding at -100.

    Left padding puts every completion at the right edge, so the LM head only has to run on the
    last (longest completion + 1) positions (`sequence_logps`); explicit position ids keep each row's
    positions 0..n-1 exactly as without padding.
    """
    width = max(len(s.ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    positions = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids = torch.tensor(s.ids, dtype=torch.long)
        start = width - len(ids)
        input_ids[i, start:] = ids
        attention[i, start:] = 1
        positions[i, start:] = torch.arange(len(ids))
        labels[i, start + s.n_prompt :] = ids[s.n_prompt :]
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions, "labels": labels}


def example_sequences(data: TrainData, indices: Sequence[int]) -> list[Tokenised]:
    """Completion data: one sequence per index; pair data: chosen then rejected per index."""
    if data.kind == "completion":
        return [data.sequences[i] for i in indices]
    return [s for i in indices for s in data.pair(i)]


def completion_tokens(data: TrainData, indices: Sequence[int]) -> int:
    return sum(s.n_completion for s in example_sequences(data, indices))
