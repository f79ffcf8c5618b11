"""Benchmark: a cold `w2s run` vs a fully cached rerun, then a β/λ change (which stages rerun).

    .venv/bin/python bench/rerun.py [--config pipeline_config.yaml] [--root /tmp/w2s-bench-rerun]

Each run is the real CLI in a fresh process (embedded Prefect server, MLflow sqlite), as a user
would type it. Prints the three wall times, the cached/cold ratio (goal ≤ 5 % on the embedded
default) and, for the β/λ change, the stages that ran (goal: weights and what follows only).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, root: Path, *overrides: str) -> tuple[float, dict[str, str]]:
    from flows.stages import STAGES

    cmd = [sys.executable, "-m", "w2s.cli", "run", "--config", config, "--set", f"run.artifact_root={root}"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode:
        sys.exit(f"run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    table = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES}
    return wall, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "pipeline_config.yaml"))
    parser.add_argument("--root", type=Path, default=Path("/tmp/w2s-bench-rerun"))
    parser.add_argument("--keep", action="store_true", help="reuse an existing root (skip the cold run's wipe)")
    args = parser.parse_args()
    if args.root.exists() and not args.keep:
        shutil.rmtree(args.root)
    cold, first = run(args.config, args.root)
    cached, second = run(args.config, args.root)
    changed, third = run(args.config, args.root, "weights.beta_over_lambda=0.5")
    label = "first run (--keep)" if args.keep else "cold run"
    print(f"{label + ':':<19}{cold:8.1f} s   ({sum(v == 'miss' for v in first.values())} stages computed)")
    print(f"cached rerun:      {cached:8.1f} s   ({sum(v == 'hit' for v in second.values())}/{len(second)} stages cached)")
    print(f"ratio cached/cold: {cached / cold:8.3f}   (goal ≤ 0.05)")
    ran = [stage for stage, cache in third.items() if cache != "hit"]
    print(f"β/λ 1 → 0.5:       {changed:8.1f} s   stages that ran: {', '.join(ran)}")


if __name__ == "__main__":
    main()
