"""`w2s`: run the EVE pipeline and inspect its config.

    w2s run --config pipeline_config.yaml [--set sampling.k=8 ...] [--until STAGE]
    w2s config show pipeline_config.yaml [--set ...]
    w2s config validate pipeline_config.yaml
    w2s stages

Exit codes: 0 done, 1 a stage failed, 2 bad config or arguments (found before any compute, nothing
written to the artifact root or MLflow).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from w2s.config_io import ConfigError, dump_yaml, load_config, preflight

EPILOG = """\
Rerunning the same command resumes: every stage whose artifact exists and verifies is reused
(Prefect shows it as Cached; MLflow tags it w2s.cache=hit). Change a key and only the stages that
read it, and those after them, run again.
"""


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", "-c", required=required, metavar="FILE", help="pipeline YAML (e.g. pipeline_config.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key, value parsed as YAML: --set sampling.k=8 --set weights.beta_over_lambda=.inf",
    )


def build_parser() -> argparse.ArgumentParser:
    from flows.stages import STAGES

    parser = argparse.ArgumentParser(prog="w2s", description="Weak-to-strong generalisation pipelines (EVE).", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the EVE flow (resumes from cached stages)", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run the EVE pipeline on a config, reusing every finished stage.")
    _add_config_args(run)
    run.add_argument("--until", choices=STAGES, metavar="STAGE", help=f"stop after this stage; one of: {', '.join(STAGES)}")

    config = sub.add_parser("config", help="show or validate a config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the fully resolved config (defaults + file + --set) as YAML")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate = config_sub.add_parser("validate", help="check a config: schema, model paths, artifact root (writes nothing)")
    validate.add_argument("file", metavar="FILE")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("stages", help="list the pipeline's stages in order")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "stages":
            from flows.stages import STAGES

            print("\n".join(STAGES))
            return 0
        if args.command == "config":
            cfg = load_config(args.file, args.overrides)
            if args.config_command == "validate":
                preflight(cfg)
                print(f"{args.file}: valid")
            else:
                sys.stdout.write(dump_yaml(cfg))
            return 0
        cfg = load_config(args.config, args.overrides)
        preflight(cfg)
    except ConfigError as exc:
        print(f"w2s: error: {exc}", file=sys.stderr)
        return 2
    return run_pipeline(cfg, args.until)


def run_pipeline(cfg, until: str | None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.eve import eve

    started = time.perf_counter()
    try:
        state = eve(config=cfg, until=until)
    except Exception as exc:  # the stage's own traceback is already in the Prefect log above
        print(f"w2s: error: flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(summary_table(state, cfg, time.perf_counter() - started))
    return 0


def summary_table(state, cfg, total_s: float) -> str:
    rows = state.rows
    header = f"{'stage':<14} {'cache':<6} {'wall':>8}  artifact"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.stage:<14} {row.cache:<6} {row.wall_s:>7.1f}s  {row.uri}")
    lines.append(f"total {total_s:.1f}s")
    lines.append(f"MLflow: mlflow ui --backend-store-uri {cfg.tracking_uri}")
    lines.append(f"        experiment '{cfg.run.experiment}', run {state.ctx.parent_run_id}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
