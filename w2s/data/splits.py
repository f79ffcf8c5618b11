"""The task data artifact: gold-labelled preferences plus four disjoint prompt splits.

Files (all Parquet):
  preferences.parquet  prompt_id, prompt, chosen, rejected, meta   (D_golden: weak SFT on chosen, DPO)
  weak_demo.parquet    prompt_id, prompt, meta                      (π_weak answers these → D_weak)
  exemplar.parquet     prompt_id, prompt, meta                      (held out; the few-shot demos are drawn from it)
  student.parquet      prompt_id, prompt, meta                      (π_ref_strong samples K per prompt)
  test.parquet         prompt_id, prompt, meta                      (evaluation, PGR)
Every prompt appears in exactly one split. `meta` is the JSON the gold reward needs ("{}" for real data).
"""

from __future__ import annotations

import logging
import random

import pyarrow as pa

from w2s.config import DataConfig
from w2s.data.synthetic import candidate_summary, make_post, sigmoid
from w2s.rewards import summary_facts_reward
from w2s.data.capacity import counts_of, fit_problem
from w2s.text import prompt_shape, tldr_completion

log = logging.getLogger(__name__)

PROMPT_SPLITS = ("weak_demo", "exemplar", "student", "test")
PREFERENCE_COLUMNS = ("prompt_id", "prompt", "chosen", "rejected", "meta")


def split_sizes(cfg: DataConfig) -> dict[str, int]:
    return {
        "preferences": cfg.n_preference, "weak_demo": cfg.n_weak_demo, "exemplar": cfg.n_exemplar_pool,
        "student": cfg.n_student, "test": cfg.n_test,
    }


def build_tables(cfg: DataConfig) -> dict[str, pa.Table]:
    if cfg.source == "synthetic":
        return synthetic_tables(cfg)
    return hf_tables(cfg)


def synthetic_tables(cfg: DataConfig) -> dict[str, pa.Table]:
    import json

    rng = random.Random(cfg.seed)
    sizes = split_sizes(cfg)
    posts, seen = [], set()
    budget = 50 * sum(sizes.values())
    while len(posts) < sum(sizes.values()):
        post = make_post(rng, cfg.synthetic.min_filler, cfg.synthetic.max_filler)
        budget -= 1
        if budget == 0:
            raise ValueError("the synthetic task cannot make that many distinct posts; lower data.n_*")
        if post.prompt not in seen:
            seen.add(post.prompt)
            posts.append(post)
    tables: dict[str, pa.Table] = {}
    offset = 0
    for split, size in sizes.items():
        chunk = posts[offset : offset + size]
        ids = [f"{split}-{offset + i:06d}" for i in range(size)]
        offset += size
        if split != "preferences":
            tables[split] = pa.table({"prompt_id": ids, "prompt": [p.prompt for p in chunk], "meta": [p.meta for p in chunk]})
            continue
        chosen, rejected = [], []
        for post in chunk:
            meta = json.loads(post.meta)
            first, second = candidate_summary(rng, post), candidate_summary(rng, post)
            while second == first:
                second = candidate_summary(rng, post)
            margin = summary_facts_reward(first, meta) - summary_facts_reward(second, meta)
            first_wins = rng.random() < sigmoid(margin)  # paper §9.1: p(y1 ≻ y2) = σ(r1 − r2)
            chosen.append(first if first_wins else second)
            rejected.append(second if first_wins else first)
        tables[split] = pa.table({
            "prompt_id": ids, "prompt": [p.prompt for p in chunk], "chosen": chosen, "rejected": rejected,
            "meta": [p.meta for p in chunk],
        })
    return tables


def _load_rows(source, columns: dict[str, str], shapes: dict[str, object]) -> list[dict]:
    """Rows of `source` as {our name: text}, non-empty text checked, shaped once here (w2s/text.py)."""
    import datasets

    where = f"{source.path!r}" + (f" ({source.data_files})" if source.data_files else "")
    try:
        dataset = datasets.load_dataset(source.path, name=source.name, data_files=source.data_files, split=source.split)
        missing = [c for c in columns if c not in dataset.column_names]
        raw = [] if missing else dataset.select_columns(list(columns)).to_list()
    except Exception as exc:  # the reader's own error (bad UTF-8, not Parquet, empty file) in one line
        raise ValueError(f"data.hf: cannot read {where}: {_first_line(exc)}") from None
    if missing:
        raise ValueError(f"data.hf: dataset {source.path!r} lacks columns {missing} (has {dataset.column_names})")
    if not raw:
        raise ValueError(f"data.hf: {where} has no rows")
    rows = []
    for index, row in enumerate(raw):
        bad = [c for c in columns if not isinstance(row[c], str) or not row[c].strip()]
        if bad:
            raise ValueError(f"data.hf: {source.path!r} row {index}: {bad} must be non-empty text "
                             f"(got {[row[c] for c in bad]!r:.200})")
        rows.append({ours: shapes[ours](row[theirs]) for theirs, ours in columns.items()})
    return rows


def _first_line(exc: BaseException) -> str:
    """The error and its root cause, each in its first line (`datasets` wraps the reader's own)."""
    def line(error: BaseException) -> str:
        text = str(error).strip().splitlines()
        return f"{type(error).__name__}: {text[0][:300]}" if text else f"{type(error).__name__} (an empty file?)"

    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    return line(exc) if root is exc else f"{line(exc)} ({line(root)})"


def _note_repeats(what: str, total: int, distinct: int) -> None:
    if total > distinct:
        log.warning("data.hf: %d of %d %s repeat an earlier prompt; each prompt is used once (%d distinct)",
                    total - distinct, total, what, distinct)


def hf_tables(cfg: DataConfig) -> dict[str, pa.Table]:
    """Real preference data (prompt/chosen/rejected, TL;DR style) through `datasets`, put in the text
    contract's shape before anything else sees it; sizes checked by w2s/data/capacity.py's rule."""
    spec = cfg.hf
    assert spec is not None
    same = (lambda text: text) if spec.text_format == "verbatim" else tldr_completion
    shapes = {"prompt": prompt_shape(spec.text_format), "chosen": same, "rejected": same}
    rows = _load_rows(spec, {spec.prompt_column: "prompt", spec.chosen_column: "chosen", spec.rejected_column: "rejected"}, shapes)
    pool_rows = None
    if spec.prompts is not None:
        pool_rows = _load_rows(spec.prompts, {spec.prompts.prompt_column: "prompt"}, shapes)
    problem = fit_problem(cfg, counts_of([r["prompt"] for r in rows], None if pool_rows is None else [r["prompt"] for r in pool_rows]))
    if problem:
        raise ValueError(problem)
    rng = random.Random(cfg.seed)
    if pool_rows is None:  # one table: distinct prompts, one pair each (the last row of a prompt)
        prompts = list(dict.fromkeys(r["prompt"] for r in rows))
        _note_repeats("preference rows", len(rows), len(prompts))
        rng.shuffle(prompts)
        by_prompt = {r["prompt"]: r for r in rows}
        preferences = [by_prompt[p] for p in prompts[: cfg.n_preference]]
        pool = prompts[cfg.n_preference :]
    else:  # several pairs per prompt; prompt splits from the other source, no post shared with the preferences
        preferences = rng.sample(rows, cfg.n_preference)
        taken = {r["prompt"] for r in rows}
        distinct = list(dict.fromkeys(r["prompt"] for r in pool_rows))
        _note_repeats("prompt-source rows", len(pool_rows), len(distinct))
        pool = [p for p in distinct if p not in taken]
        if len(pool) < len(distinct):
            log.info("data.hf: %d prompts of the prompt source are also preference prompts: left out of the prompt splits",
                     len(distinct) - len(pool))
        rng.shuffle(pool)
    tables = {"preferences": pa.table({
        "prompt_id": [f"preferences-{i:06d}" for i in range(cfg.n_preference)],
        **{c: [r[c] for r in preferences] for c in ("prompt", "chosen", "rejected")}, "meta": ["{}"] * cfg.n_preference,
    })}
    offset = 0
    for split, size in split_sizes(cfg).items():
        if split == "preferences":
            continue
        ids = [f"{split}-{cfg.n_preference + offset + i:06d}" for i in range(size)]
        tables[split] = pa.table({"prompt_id": ids, "prompt": pool[offset : offset + size], "meta": ["{}"] * size})
        offset += size
    return tables


def validate_preferences(table: pa.Table, source: str) -> None:
    """Rows with empty chosen/rejected or chosen == rejected make DPO meaningless: name them."""
    missing = [c for c in PREFERENCE_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}")
    chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    bad = [i for i, (c, r) in enumerate(zip(chosen, rejected)) if not c or not c.strip() or not r or not r.strip() or c == r]
    if bad:
        raise ValueError(f"{source}: rows {bad[:10]}{'…' if len(bad) > 10 else ''} have empty or identical chosen/rejected")


def read_preferences(data_dir, source: str) -> pa.Table:
    """The data artifact's gold preferences, validated (bad rows named) before any training."""
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "preferences.parquet")
    validate_preferences(table, f"{source}/preferences.parquet")
    return table
