"""`w2s`: run the EVE pipeline and inspect its config.

    w2s run --config pipeline_config.yaml [--set sampling.k=8 ...] [--until STAGE] [--force STAGE]
    w2s plan --config pipeline_config.yaml [--flow baselines] [--set ...]   # hit or miss per stage, and why
    w2s train weighted_mle --model DIR --data SHARDS --out DIR              # the trainer on its own
    w2s config show pipeline_config.yaml [--set ...]
    w2s config validate pipeline_config.yaml
    w2s stages [--flow baselines]
    w2s baselines --config pipeline_config.yaml        # EVE vs naive SFT, refinement, DPO, strong-as-evaluator
    w2s sweep --config pipeline_config.yaml --set "sweep.seeds=[0,1,2]"
    w2s report --config pipeline_config.yaml --flow baselines --out reports/
    w2s classification --config configs/classification.yaml [--set aux.alpha_max=0.5 ...]
    w2s theory --config configs/theory.yaml [--set theory.n_finetune_tasks=20 ...]

Exit codes: 0 done, 1 a stage failed, 2 bad config or arguments (found before any compute, nothing
written to the artifact root or MLflow).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from flows import FLOWS, flow_named
from w2s.config.loading import ConfigError, check_data, check_machine, check_pod, dump_yaml, load_config, preflight

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
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show Prefect, vLLM, transformers and DeepSpeed output here (default: in a log file under the artifact root)")


def _add_force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="recompute this stage and every stage after it that it feeds, though cached (repeatable)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("w2s")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2s", description="Weak-to-strong generalisation pipelines (EVE).", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"w2s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the EVE flow (resumes from cached stages)", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run the EVE pipeline on a config, reusing every finished stage.")
    _add_config_args(run)
    run.add_argument("--until", metavar="STAGE", help="stop after this stage (`w2s stages` lists the flow's stages in order)")
    _add_force_arg(run)

    plan = sub.add_parser("plan", help="say, for each stage, whether a run would reuse it or compute it, and why (computes nothing)",
                          description="Trace a flow on a config against the artifact root: each stage's cache hit or miss, and "
                          "for a miss what changed (stage version, config keys old → new, inputs).")
    _add_config_args(plan)
    plan.add_argument("--flow", choices=tuple(FLOWS), default="eve", help="which flow (default: eve)")

    from w2s.train_cli import add_train_parser

    add_train_parser(sub)

    config = sub.add_parser("config", help="show or validate a config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the fully resolved config (defaults + file + --set) as YAML")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate = config_sub.add_parser("validate", help="check a config: schema, model paths, artifact root (writes nothing)")
    validate.add_argument("file", metavar="FILE")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate.add_argument("--pod-gpus", type=int, metavar="N", help="also check the config fits a pod of N GPUs "
                          "(the gpu_count job variable of its Kubernetes deployment)")

    stages = sub.add_parser("stages", help="list a flow's stages in the order it runs them (traced from the flow; nothing runs)")
    stages.add_argument("--flow", choices=tuple(FLOWS), default="eve",
                        help="which flow (default: eve)")

    for name, text in (("baselines", "EVE and every baseline of the paper, each evaluated, one PGR report"),
                       ("sweep", "the baselines over sweep.seeds, EVE over sweep.beta_over_lambda and sweep.k; mean ± 95%% CI")):
        flow_parser = sub.add_parser(name, help=f"run the {name} flow: {text}", description=f"Run the {name} flow: {text}. "
                                     "Every stage shared with earlier runs is reused from the cache.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_config_args(flow_parser)
        flow_parser.add_argument("--until", metavar="STAGE", help=f"stop after this stage (`w2s stages --flow {name}` lists them)")
        _add_force_arg(flow_parser)
    report = sub.add_parser("report", help="write the PGR report (Markdown + HTML) of a flow, running what is not cached",
                            description="Runs FLOW (cached stages are reused), then copies its report folder to --out.")
    _add_config_args(report)
    report.add_argument("--flow", choices=("eve", "baselines", "sweep"), default="eve",
                        help="which flow's report (default: eve, what `w2s run` and `make run` run); stages it lacks are "
                        "named, then computed")
    report.add_argument("--out", default="reports", metavar="DIR", help="where report.md, report.html and figures/ go (default: reports)")

    classification = sub.add_parser(
        "classification", help="run the w2s_classification flow (Burns et al. W2S on LM features; resumes from cached stages)",
        description="Weak-to-strong classification: weak/strong heads, aux confidence loss, bootstrapping, probes, epochs ablation.",
    )
    _add_config_args(classification)

    theory = sub.add_parser("theory", help="run the w2s_theory flow (synthetic misfit vs gain, seed paper 001 §5.3)",
                            description="Synthetic regression: weak/strong representations, linear heads, misfit vs gain per setting and loss.")
    _add_config_args(theory, required=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a block-buffered stdout meets the closed pipe here, not in print()
        return code
    except BrokenPipeError:  # `w2s stages | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush is quiet too
        return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    global VERBOSE
    VERBOSE = getattr(args, "verbose", False)
    # Prefect's embedded server gets 20 s to start by default: too little on 2 busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    try:
        if args.command == "stages":
            from flows.stages import stages_of

            print("\n".join(stages_of(args.flow)))
            return 0
        if args.command == "classification":
            return run_classification(args.config, args.overrides)
        if args.command == "theory":
            return run_theory(args.config, args.overrides)
        if args.command == "train":
            from w2s.train_cli import run_train

            return run_train(args)
        if args.command == "config":
            cfg = load_config(args.file, args.overrides)
            if args.config_command == "validate":
                preflight(cfg)
                check_stages(cfg, "eve", None)
                check_pod(cfg, args.pod_gpus)
                print(f"{args.file}: valid ({check_data(cfg)})")
            else:
                sys.stdout.write(dump_yaml(cfg))
            return 0
        flow_name = "eve" if args.command == "run" else args.flow if args.command in ("report", "plan") else args.command
        cfg = load_config(args.config, args.overrides)
        preflight(cfg)
        if args.command != "plan":
            check_machine(cfg)
        check_stages(cfg, flow_name, getattr(args, "until", None), getattr(args, "force", []))
    except ConfigError as exc:
        print(f"w2s: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "plan":
        return print_plan(cfg, flow_name)
    if args.command == "report":
        return write_report(cfg, flow_name, args.out)
    from w2s.stage import forcing

    with forcing(args.force):
        return run_pipeline(cfg, args.until, flow_name)


def check_stages(cfg, flow_name: str, until: str | None, force: list[str] = ()) -> None:
    """Stage names in the config, `--until` and `--force` name stages of the registry / of this flow."""
    import tasks  # noqa: F401  (declares every stage: the registry the names are checked against)
    from w2s.orchestration import flow_stages
    from w2s.stage import check_stage_names

    try:
        check_stage_names(cfg.orchestration)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    named = ([("--until", until)] if until is not None else []) + [("--force", name) for name in force]
    if named:
        names = flow_stages(flow_named(flow_name), cfg)
        for option, name in named:
            if name not in names:
                raise ConfigError(f"{option}: {name!r} is not a stage of the {flow_name} flow; one of: {', '.join(names)}")


def print_plan(cfg, flow_name: str) -> int:
    from w2s.orchestration import trace_flow
    from w2s.plan import Planner, render

    planner = Planner(cfg.run.artifact_root)
    trace_flow(flow_named(flow_name), cfg, planner)
    print(render(planner.rows))
    return 0


def run_pipeline(cfg, until: str | None, flow_name: str = "eve") -> int:
    return 0 if _run_flow(cfg, flow_named(flow_name), until=until) is not None else 1


VERBOSE = False  # --verbose: the whole console output, no log file


def _run_flow(cfg, flow_fn, **params):
    """Runs a flow on `cfg` and prints the stage table; None (message on stderr) when it failed.
    Without --verbose the libraries' output goes to a log file (w2s/console.py)."""
    from contextlib import nullcontext

    from w2s.console import log_path, quiet_console

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    log = None if VERBOSE else log_path(cfg.run.artifact_root, getattr(flow_fn, "name", "flow"))
    try:
        with quiet_console(log) if log is not None else nullcontext():
            state = flow_fn(config=cfg, **params)
    except Exception as exc:  # the stage's own traceback is in the Prefect log (the log file when quiet)
        print(f"w2s: error: flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if log is not None:
            print(f"log: {log}", file=sys.stderr)
        return None
    if log is not None:
        print(f"log: {log}")
    print(summary_table(state, cfg, time.perf_counter() - started))  # ends with the science
    return state


def write_report(cfg, flow_name: str, out: str) -> int:
    import shutil
    from pathlib import Path

    from w2s.artifacts import local_path_of

    from w2s.orchestration import trace_flow
    from w2s.plan import Planner

    planner = Planner(cfg.run.artifact_root)
    trace_flow(flow_named(flow_name), cfg, planner)
    missing = [row.stage for row in planner.rows if row.cache == "miss"]
    if missing:  # `w2s report` after `make run` must not train baselines without a word
        print(f"w2s report: {len(missing)} stage(s) of the {flow_name} flow are not in the artifact root and run first: "
              f"{', '.join(missing)}", file=sys.stderr)
    state = _run_flow(cfg, flow_named(flow_name), until=None)
    if state is None:
        return 1
    source = local_path_of(next(row.uri for row in state.rows if row.stage == "report"))
    if source is None:
        print("w2s: error: report copies need a local artifact root; open the report artifact in MLflow", file=sys.stderr)
        return 1
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "report.html", "pgr.json"):
        shutil.copy2(source / name, target / name)
    shutil.copytree(source / "figures", target / "figures", dirs_exist_ok=True)
    print(f"report: {target / 'report.md'} and {target / 'report.html'}")
    return 0


def run_classification(path: str, overrides: list[str]) -> int:
    """`w2s classification`: flows/w2s_classification.py on its own schema (w2s/config/classification.py)."""
    from w2s.config.classification import load_classification_config
    from w2s.config.loading import check_writable_root

    cfg = load_classification_config(path, overrides)  # a ConfigError reaches main's handler: exit code 2
    check_writable_root(cfg.run.artifact_root)
    from flows.w2s_classification import w2s_classification

    state = _run_flow(cfg, w2s_classification)
    if state is None:
        return 1
    report = next((row.uri for row in state.rows if row.stage == "cls_report"), None)
    if report:
        print(f"report: {report}/report.md")
    return 0


def run_theory(path: str | None, overrides: list[str]) -> int:
    """`w2s theory`: its config has its own schema (w2s/config/theory.py) around the shared RunConfig."""
    from w2s.config.loading import check_writable_root
    from w2s.config.theory import load_theory_config

    cfg = load_theory_config(path, overrides)  # a ConfigError reaches main's handler: exit code 2
    check_writable_root(cfg.run.artifact_root)
    from flows.w2s_theory import w2s_theory

    return 0 if _run_flow(cfg, w2s_theory) is not None else 1


def summary_table(state, cfg, total_s: float) -> str:
    from w2s.tracking import is_server

    rows = state.rows
    width = max([14] + [len(row.stage) for row in rows])
    header = f"{'stage':<{width}} {'cache':<6} {'wall':>8}  artifact"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.stage:<{width}} {row.cache:<6} {row.wall_s:>7.1f}s  {row.uri}")
    report = next((row.uri for row in rows if row.stage == "report"), None)
    lines.append(f"total {total_s:.1f}s")
    if report:
        lines.append(f"report: {report}/report.html")
    if is_server(cfg.tracking_uri):  # a server: open it, there is nothing to start
        lines.append(f"MLflow: {cfg.tracking_uri}")
    else:
        lines.append(f"MLflow: mlflow ui --backend-store-uri {cfg.tracking_uri}")
    lines.append(f"        experiment '{cfg.run.experiment}', run {state.ctx.parent_run_id}")
    return "\n".join(lines + (science_lines(report) if report else []))


def science_lines(report_uri: str) -> list[str]:
    """The run's result, last on the console: the report's headline and its PGR table."""
    from w2s.artifacts import local_path_of

    path = local_path_of(report_uri)
    if path is None or not (path / "report.md").exists():
        return []
    text = (path / "report.md").read_text().splitlines()
    headline = [line.replace("**", "") for line in text[1:4] if line.startswith("**EVE")]
    start = next((i for i, line in enumerate(text) if line.startswith("| policy")), len(text))
    table = []
    for line in text[start:]:  # the PGR table: the first block of rows after its header
        if not line.startswith("|"):
            break
        table.append(line)
    return ["", *headline, *table] if headline or table else []


if __name__ == "__main__":
    sys.exit(main())
