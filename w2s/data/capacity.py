"""Do the configured split sizes fit the data? One rule, checked twice.

The data stage checks it on the rows it loaded (w2s/data/splits.py), before it writes anything;
`w2s config validate` checks it earlier, without `datasets` and without writing a cache, whenever
the data is a local copy in Parquet (a folder in the hub's layout, `data/<split>-*.parquet`, or
`data_files`): it reads only the prompt column and counts rows and distinct prompts in the text
contract's shape. A hub id cannot be counted offline; validate says so, and the data stage checks.

Two layouts (data.hf.prompts, w2s/config/data.py):
- one table: every split takes distinct prompts, one preference pair per prompt, so
  n_preference + n_weak_demo + n_exemplar_pool + n_student + n_test ≤ distinct prompts;
- preferences + a prompt source: n_preference ≤ rows of the preference split (several pairs per
  prompt), and the four prompt splits ≤ distinct prompts of the prompt source that are not
  among the preference prompts.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from w2s.config import DataConfig, HFSource
from w2s.text import prompt_shape

PROMPT_SPLIT_KEYS = ("n_weak_demo", "n_exemplar_pool", "n_student", "n_test")


@dataclass(frozen=True)
class DataCounts:
    preference_rows: int
    preference_prompts: int  # distinct
    prompt_pool: int  # distinct prompts the four prompt splits may take (after removing preference prompts)


def fit_problem(cfg: DataConfig, counts: DataCounts) -> str | None:
    """One line naming the keys that do not fit, or None."""
    spec = cfg.hf
    prompt_need = sum(getattr(cfg, k) for k in PROMPT_SPLIT_KEYS)
    where = f"{spec.path!r} split {spec.split!r}"
    if spec.prompts is None:
        need = cfg.n_preference + prompt_need
        if need > counts.preference_prompts:
            return (f"data: n_preference + {' + '.join(PROMPT_SPLIT_KEYS)} = {need:,} distinct prompts, but {where} has "
                    f"{counts.preference_prompts:,} ({counts.preference_rows:,} rows); lower them or set data.hf.prompts")
        return None
    if cfg.n_preference > counts.preference_rows:
        return f"data.n_preference = {cfg.n_preference:,} pairs, but {where} has {counts.preference_rows:,} rows"
    if prompt_need > counts.prompt_pool:
        source = spec.prompts
        return (f"data: {' + '.join(PROMPT_SPLIT_KEYS)} = {prompt_need:,} prompts, but {source.path!r} split "
                f"{source.split!r} has {counts.prompt_pool:,} distinct prompts outside the preferences")
    return None


def local_parquet_files(source: HFSource) -> list[Path] | None:
    """The Parquet files of `source.split` when the data is a local copy; None otherwise."""
    if source.data_files is not None:
        files = [source.data_files] if isinstance(source.data_files, str) else list(source.data_files)
        if source.path != "parquet" or source.split != "train" or any("://" in f for f in files):
            return None  # datasets names data_files without a mapping 'train'
        found = sorted({Path(p) for f in files for p in (glob.glob(f, recursive=True) if any(c in f for c in "*?[") else [f])})
        return found if found and all(f.suffix == ".parquet" and f.is_file() for f in found) else None
    folder = Path(source.path).expanduser()
    if not folder.is_dir():
        return None
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        split_files = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except FileNotFoundError:
        return None
    files = [Path(f) for f in split_files.get(source.split, [])]
    return files if files and all(f.suffix == ".parquet" for f in files) else None


def local_prompts(source: HFSource, column: str, shape) -> list[str] | None:
    """The split's prompts in contract shape, read from a local Parquet copy; None if not local."""
    import pyarrow.parquet as pq

    files = local_parquet_files(source)
    if files is None:
        return None
    prompts: list[str] = []
    for file in files:
        names = pq.ParquetFile(file).schema_arrow.names
        if column not in names:
            raise ValueError(f"{file}: no column {column!r} (has {names})")
        prompts += [shape(p) for p in pq.read_table(file, columns=[column]).column(column).to_pylist()]
    return prompts


def counts_of(preference_prompts: list[str], pool_prompts: list[str] | None) -> DataCounts:
    """Counts from prompt lists; with a prompt source, the pool excludes every prompt of the
    preference split (so no prompt split shares a post with D_golden, whichever rows are drawn)."""
    distinct = set(preference_prompts)
    pool = len(distinct) if pool_prompts is None else len(set(pool_prompts) - distinct)
    return DataCounts(len(preference_prompts), len(distinct), pool)


def check_local_data(cfg: DataConfig) -> str:
    """For `w2s config validate`: raises ValueError (one line) when the sizes do not fit a local
    copy; returns what was checked."""
    spec = cfg.hf
    if cfg.source != "hf" or spec is None:
        return "synthetic data: sizes always fit"
    shape = prompt_shape(spec.text_format)
    preference = local_prompts(spec, spec.prompt_column, shape)
    pool = local_prompts(spec.prompts, spec.prompts.prompt_column, shape) if spec.prompts is not None else None
    if preference is None or (spec.prompts is not None and pool is None):
        return "data sizes: not a local Parquet copy, checked when the data stage loads it"
    counts = counts_of(preference, pool)
    problem = fit_problem(cfg, counts)
    if problem:
        raise ValueError(problem)
    return (f"data sizes fit: {counts.preference_rows:,} preference rows ({counts.preference_prompts:,} prompts), "
            f"{counts.prompt_pool:,} prompts for the prompt splits")
