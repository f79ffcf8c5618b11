"""DPO reference log-probs: computed once from the initial policy, stored as Parquet, reused.

The table has one row per training pair, in data order: `shard`, `row` (where the pair came from),
`ref_chosen`, `ref_rejected` (summed completion log-probs), and the completion token counts, which
`resolve_ref_logps` checks against the freshly tokenised data so a table computed for other data
or another tokenizer/max_seq_len is rejected instead of silently misaligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from w2s.config import TrainConfig
from w2s.training.data import DataError, TrainData, collate, example_sequences, load_data
from w2s.training.objectives import sequence_logps

REF_FILE = "ref_logps.parquet"


@torch.no_grad()
def reference_logps(model, data: TrainData, micro_batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed completion log-probs of every pair under `model`, in eval mode.

    Under ZeRO-3 every rank must run the same forwards (parameters are gathered collectively), so
    each rank scores all pairs; that costs one forward per pair per rank, once per run.
    """
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    order = sorted(range(len(data)), key=lambda i: len(data.pair(i)[0].ids) + len(data.pair(i)[1].ids))
    # pad id 0: padding is masked out of attention and labels, so its id does not matter
    for start in range(0, len(order), micro_batch_size):
        idx = order[start : start + micro_batch_size]
        batch = {k: v.to(device) for k, v in collate(example_sequences(data, idx), 0).items()}
        logps = sequence_logps(model, batch).float().cpu()
        chosen.append((idx, logps[0::2]))
        rejected.append((idx, logps[1::2]))
    model.train(was_training)
    out_c, out_r = torch.empty(len(data), dtype=torch.float64), torch.empty(len(data), dtype=torch.float64)
    for (idx, c), (_, r) in zip(chosen, rejected):
        out_c[idx] = c.double()
        out_r[idx] = r.double()
    return out_c, out_r


def ref_table(data: TrainData, ref: tuple[torch.Tensor, torch.Tensor]):
    import pyarrow as pa

    return pa.table({
        # the file name, not the path: the table is an artifact file, and its digest must not
        # depend on where the artifact root happens to live
        "shard": [Path(s).name for s, _ in data.sources],
        "row": [r for _, r in data.sources],
        "ref_chosen": ref[0].tolist(),
        "ref_rejected": ref[1].tolist(),
        "n_tokens_chosen": [data.pair(i)[0].n_completion for i in range(len(data))],
        "n_tokens_rejected": [data.pair(i)[1].n_completion for i in range(len(data))],
    })


def write_ref_logps(path: Path, data: TrainData, ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    import os
    import uuid

    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{uuid.uuid4().hex[:8]}")
    pq.write_table(ref_table(data, ref), tmp)
    os.replace(tmp, path)


def resolve_ref_logps(value, data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
    """A Table or Parquet path from `compute_reference_logps`, checked against `data`."""
    import pyarrow.parquet as pq

    table = pq.read_table(value) if isinstance(value, (str, Path)) else value
    where = str(value) if isinstance(value, (str, Path)) else "ref_logps"
    if table.num_rows != len(data):
        raise DataError(f"{where}: {table.num_rows} rows but the training data has {len(data)} pairs")
    cols = table.to_pydict()
    for i in range(len(data)):
        chosen, rejected = data.pair(i)
        if (cols["n_tokens_chosen"][i], cols["n_tokens_rejected"][i]) != (chosen.n_completion, rejected.n_completion):
            raise DataError(f"{where}: row {i} was computed for other tokens than {data.sources[i][0]} row "
                            f"{data.sources[i][1]} (different data, tokenizer or max_seq_len)")
    as_tensor = lambda c: torch.tensor(cols[c], dtype=torch.float64)  # noqa: E731
    return as_tensor("ref_chosen"), as_tensor("ref_rejected")


def compute_reference_logps(model_dir: str | Path, data_files: Sequence[str | Path], cfg: TrainConfig, device: str = "cpu"):
    """The reference table for a DPO run, from a plain HF model (no DeepSpeed): a stage can cache
    it as its own artifact and pass it to `train(..., ref_logps=...)`."""
    from w2s.models.build import load_pretrained

    model, tokenizer = load_pretrained(model_dir, device=device)
    data = load_data(data_files, "pair", tokenizer, cfg, getattr(model.config, "max_position_embeddings", None))
    return ref_table(data, reference_logps(model, data, cfg.micro_batch_size, device))
