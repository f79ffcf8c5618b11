"""Benchmark: what starting the ranks of one multi-rank training stage costs, launched through
DeepSpeed's runner (`deepspeed.launcher.runner --num_gpus N`, as w2s did to stop 37) and through its
per-node launcher directly (w2s/training/launcher.py `local_launch_command`, now).

    .venv/bin/python bench/rank_launch.py [--ranks 2] [--repeats 3]

Each rank imports DeepSpeed, joins the process group (gloo on CPU, the rendezvous a training stage
makes) and exits; no model, no data, so the figure is pure start-up, paid once per training stage.
Both ways alternate `--repeats` times in this one process, so a busy machine slows both alike;
medians are printed with their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s.training.engine import _free_port  # noqa: E402
from w2s.training.launcher import local_launch_command, rank_env, release_allreduce_buffers  # noqa: E402

RANK = """
import deepspeed, torch.distributed as dist
deepspeed.init_distributed(dist_backend="gloo")
assert dist.get_world_size() == {ranks}
dist.barrier()
"""


def _timed(command: list[str], env: dict) -> float:
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "bench_rank.py").write_text(RANK.format(ranks=args.ranks))
        env = rank_env() | {"PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", "")}
        runner, direct = [], []
        for _ in range(args.repeats):
            port = _free_port()
            runner.append(_timed([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.ranks),
                                  "--master_port", str(port), "--module", "bench_rank"], env))
            release_allreduce_buffers(port)  # DeepSpeed's CPU ranks leave 66 MB of /dev/shm each
            port = _free_port()
            command = local_launch_command(args.ranks, port, Path("unused"))
            direct.append(_timed(command[:command.index("w2s.training.rank")] + ["bench_rank"], env))
            release_allreduce_buffers(port)
    a, b = statistics.median(runner), statistics.median(direct)
    print(f"{args.ranks} ranks, median of {args.repeats}: runner → launch {a:.1f} s; launch directly {b:.1f} s; "
          f"{a / b:.2f}× ({a - b:.1f} s saved per training stage)")


if __name__ == "__main__":
    main()
