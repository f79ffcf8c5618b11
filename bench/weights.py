"""Benchmark: the weights stage's core on 10 M synthetic rows, streamed shard by shard.

    .venv/bin/python bench/weights.py [--rows 10000000] [--k 4] [--shard-rows 512]

--shard-rows defaults to the pipeline's own shard size (sampling.shard_rows), the worst case for the
split-across-shards check: 19,532 shards at 10 M rows.

Prints wall time (goal ≤ 10 s) and peak RSS over the run (goal ≤ 1 GB and flat: one shard at a time),
and compares with loading every row at once (the non-streaming way) for the memory ratio.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from w2s.config import SamplingConfig
from w2s.weights import ShardWeighter


def make_shards(folder: Path, rows: int, k: int, shard_rows: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        prompt = (start + np.arange(n)) // k
        table = pa.table({
            "prompt_id": pa.array(np.char.add("p", prompt.astype(str))),
            "sample_idx": pa.array((np.arange(n) % k).astype(np.int32)),
            "logp_weak": rng.normal(-40, 10, n), "logp_weak_ref": rng.normal(-40, 10, n),
        })
        path = folder / f"part-{index:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--shard-rows", type=int, default=SamplingConfig().shard_rows)
    args = parser.parse_args()
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = make_shards(folder, args.rows, args.k, args.shard_rows)
        print(f"made {args.rows:,} rows in {len(paths)} shards in {time.perf_counter() - t0:.1f}s")
        rss_start = process.memory_info().rss
        rss_peak = rss_start
        weighter = ShardWeighter(1.0)
        check_s = [0.0]
        check = weighter._check_not_split

        def timed_check(names, shard):
            started = time.perf_counter()
            check(names, shard)
            check_s[0] += time.perf_counter() - started

        weighter._check_not_split = timed_check
        core_s = 0.0
        t0 = time.perf_counter()
        for path in paths:
            table = pq.read_table(path)
            started = time.perf_counter()
            table, diagnostics = weighter.process(table, path.name)
            core_s += time.perf_counter() - started
            pq.write_table(table, folder / f"out-{path.name}")
            pq.write_table(diagnostics, folder / f"diag-{path.name}")
            rss_peak = max(rss_peak, process.memory_info().rss)
        streamed = time.perf_counter() - t0
        print(f"streamed: {streamed:.2f}s for {weighter.stats.rows:,} rows "
              f"({weighter.stats.rows / streamed / 1e6:.2f} M rows/s), peak RSS {rss_peak / 2**30:.2f} GiB "
              f"(+{(rss_peak - rss_start) / 2**20:.0f} MiB over start); ESS mean {weighter.stats.metrics()['ess_mean']:.3f}")
        print(f"  of which weights core {core_s:.2f}s (split-across-shards check {check_s[0]:.2f}s), "
              f"Parquet read/write {streamed - core_s:.2f}s over {len(paths)} shards ({1e3 * (streamed - core_s) / len(paths):.2f} ms/shard)")
        t0 = time.perf_counter()
        whole = pa.concat_tables(pq.read_table(p) for p in paths)
        ShardWeighter(1.0).process(whole, "all")
        at_once = time.perf_counter() - t0
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"all-at-once: {at_once:.2f}s, process max RSS {max_rss / 2**30:.2f} GiB")
        print(f"ratio streamed/all-at-once wall: {streamed / at_once:.2f}; "
              f"streamed peak RSS / all-at-once max RSS: {rss_peak / max_rss:.2f}")


if __name__ == "__main__":
    main()
