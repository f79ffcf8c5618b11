"""The PGR report (paper §5 figures 3–5, §11.2 figure 9) from evaluation artifacts.

Inputs are labelled evaluations: `"<policy>"`, or with the run they belong to,
`"<policy>/seed:1"` / `"eve/seed:0/beta_over_lambda:0.5"` (characters MLflow accepts in a param key). Within one seed, `weak` and
`strong_ceiling` anchor PGR and `reference` (the strong base) is the win-rate opponent. Over seeds,
each number is a mean ± 95 % CI (Student t).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from w2s.evaluation import mean_ci95, pgr, win_rate

WEAK, STRONG, REFERENCE = "weak", "strong_ceiling", "reference"


@dataclass(frozen=True)
class Label:
    policy: str
    seed: int = 0
    beta_over_lambda: float | None = None
    k: int | None = None

    @property
    def swept(self) -> tuple[str, float] | None:
        if self.beta_over_lambda is not None:
            return "beta_over_lambda", self.beta_over_lambda
        return ("k", float(self.k)) if self.k is not None else None

    @classmethod
    def parse(cls, text: str) -> Label:
        policy, *pairs = text.split("/")
        fields: dict = {}
        for pair in pairs:
            key, _, value = pair.partition(":")
            if key == "seed":
                fields["seed"] = int(value)
            elif key == "beta_over_lambda":
                fields["beta_over_lambda"] = float(value)
            elif key == "k":
                fields["k"] = int(value)
            else:
                raise ValueError(f"unknown field {key!r} in evaluation label {text!r}")
        return cls(policy, **fields)

    def __str__(self) -> str:
        swept = self.swept
        extra = "" if swept is None else f"/{swept[0]}:{swept[1]:g}"
        return f"{self.policy}/seed:{self.seed}{extra}"


@dataclass
class PolicyResult:
    """One policy over seeds: per-seed values of each metric, final and per checkpoint fraction."""

    p: list[float] = field(default_factory=list)
    pgr: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # the seed of each entry of p, pgr and win
    win: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    curve: dict[float, list[float]] = field(default_factory=lambda: defaultdict(list))  # fraction → PGR per seed
    kl_win: list[tuple[float, float, float]] = field(default_factory=list)  # (fraction, KL, win-rate) per checkpoint
    kl_gold: list[tuple[int, float, float, float]] = field(default_factory=list)  # (seed, fraction, KL, P) per checkpoint


@dataclass
class Report:
    policies: dict[str, PolicyResult]
    sweeps: dict[str, dict[str, dict[float, list[float]]]]  # "beta_over_lambda" | "k" → policy → value → PGR per seed
    warnings: list[str]

    def table_rows(self) -> list[dict[str, str]]:
        return [{"policy": name, "P(π)": str(mean_ci95(r.p)), "PGR": str(mean_ci95(r.pgr)), "win-rate": str(mean_ci95(r.win)),
                 "KL(π‖π_ref)": str(mean_ci95(r.kl)), "seeds": str(len(r.p))} for name, r in self.ordered()]

    def per_seed(self) -> dict[str, dict[int, dict[str, float]]]:
        """policy → seed → P, PGR and win-rate: what the mean ± CI rows summarise."""
        return {name: {seed: {"P": p, "PGR": g, "win-rate": w} for seed, p, g, w in zip(r.seeds, r.p, r.pgr, r.win)}
                for name, r in self.ordered()}

    def paired_rows(self, method: str = "eve") -> list[dict[str, str]]:
        """`method` minus each other method in PGR, paired by seed: the seeds share test prompts and
        anchors, so the per-seed difference is far less noisy than comparing two unpaired CIs."""
        if method not in self.policies:
            return []
        pgr_by_seed = {name: dict(zip(r.seeds, r.pgr)) for name, r in self.ordered()}
        ours, rows = pgr_by_seed[method], []
        for name, theirs in pgr_by_seed.items():
            seeds = sorted(set(ours) & set(theirs))
            if name in (method, WEAK, STRONG) or not seeds:
                continue
            differences = [ours[s] - theirs[s] for s in seeds]
            rows.append({"baseline": name, f"PGR({method}) − PGR(baseline)": str(mean_ci95(differences)),
                         f"seeds {method} is ahead": f"{sum(d > 0 for d in differences)}/{len(seeds)}"})
        return rows

    def ordered(self) -> list[tuple[str, PolicyResult]]:
        """The anchors first (weak, reference, ceiling), then the methods in name order."""
        rank = {WEAK: 0, REFERENCE: 1, STRONG: 2}
        return sorted(self.policies.items(), key=lambda item: (rank.get(item[0], 3), item[0]))


def _rows_at(table: pa.Table, column: str, value) -> pa.Table:
    return table.filter(pa.compute.equal(table[column], value))


def _rewards(rows: pa.Table) -> dict[str, float]:
    """prompt_id → gold reward of one checkpoint's answers."""
    return dict(zip(rows["prompt_id"].to_pylist(), rows["gold_reward"].to_pylist()))


def _mean(rewards: dict[str, float]) -> float:
    return float(np.mean(list(rewards.values())))


def _paired_win(policy: dict[str, float], reference: dict[str, float]) -> float:
    ids = sorted(set(policy) & set(reference))
    return win_rate([policy[i] for i in ids], [reference[i] for i in ids])


def build_report(evaluations: dict[str, pa.Table]) -> Report:
    """`evaluations`: label → the `samples.parquet` of an evaluate stage."""
    labelled = {Label.parse(text): table for text, table in evaluations.items()}
    anchors: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)  # seed → anchor policy → rewards
    for label, table in labelled.items():
        if label.policy in (WEAK, STRONG, REFERENCE) and label.swept is None:
            anchors[label.seed][label.policy] = _rewards(_rows_at(table, "checkpoint", "final"))
    policies: dict[str, PolicyResult] = {}
    sweeps: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    warnings: list[str] = []
    for seed, found in sorted(anchors.items()):
        missing = {WEAK, STRONG} - set(found)
        if missing:
            warnings.append(f"seed {seed}: no {', '.join(sorted(missing))} evaluation, so no PGR")
        elif _mean(found[STRONG]) <= _mean(found[WEAK]):
            warnings.append(f"seed {seed}: the strong ceiling does not beat the weak teacher; PGR is undefined or inverted")
    for label, table in sorted(labelled.items(), key=lambda item: str(item[0])):
        anchor = anchors.get(label.seed, {})
        p_weak = _mean(anchor[WEAK]) if WEAK in anchor else math.nan
        p_strong = _mean(anchor[STRONG]) if STRONG in anchor else math.nan
        final_rows = _rows_at(table, "checkpoint", "final")
        final = _rewards(final_rows)
        value = pgr(_mean(final), p_weak, p_strong)
        if label.swept is not None:
            name, point = label.swept
            sweeps[name][label.policy][point].append(value)
            continue
        result = policies.setdefault(label.policy, PolicyResult())
        result.p.append(_mean(final))
        result.pgr.append(value)
        result.seeds.append(label.seed)
        reference = anchor.get(REFERENCE)
        result.win.append(_paired_win(final, reference) if reference else math.nan)
        if "k3" in table.column_names:
            result.kl.append(float(np.mean(final_rows["k3"].to_numpy())))
        for fraction in sorted(set(table["fraction"].to_pylist())):
            rows = _rows_at(table, "fraction", fraction)
            rewards = _rewards(rows)
            result.curve[fraction].append(pgr(_mean(rewards), p_weak, p_strong))
            if "k3" in rows.column_names and rows["k3"].null_count == 0:  # null: no KL there (kl_checkpoints: final)
                kl = float(np.mean(rows["k3"].to_numpy()))
                result.kl_gold.append((label.seed, fraction, kl, _mean(rewards)))
                if reference:
                    result.kl_win.append((fraction, kl, _paired_win(rewards, reference)))
    return Report(policies, {name: {policy: dict(points) for policy, points in by_policy.items()} for name, by_policy in sweeps.items()},
                  warnings)


# ------------------------------------------------------------------------------------------ plots
def bar_policies(report: Report) -> list[str]:
    """The bars of the PGR chart: every policy the run evaluated, anchors included (grey)."""
    return [name for name, _ in report.ordered()]


def plot_report(report: Report, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    every = bar_policies(report)
    names = [n for n in every if n not in (WEAK, STRONG, REFERENCE)]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(every)), 3.5))
    stats = [mean_ci95(report.policies[n].pgr) for n in every]
    colours = ["#999999" if n in (WEAK, STRONG, REFERENCE) else "#1f77b4" for n in every]
    ax.bar(every, [100 * s.mean for s in stats], yerr=[0 if math.isnan(s.half_width) else 100 * s.half_width for s in stats],
           capsize=4, color=colours)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("PGR (%)")
    ax.set_title("PGR by policy (fig. 4; grey: the anchors)")
    ax.tick_params(axis="x", rotation=20)
    save(fig, "pgr_bars.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in names:
        curve = report.policies[name].curve
        if len(curve) > 1:
            xs = sorted(curve)
            ax.plot([100 * x for x in xs], [100 * mean_ci95(curve[x]).mean for x in xs], marker="o", label=name)
    ax.set_xlabel("training progress (% of the run)")
    ax.set_ylabel("PGR (%)")
    ax.set_title("PGR over training (fig. 3)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save(fig, "pgr_over_training.png")

    for name, by_policy in report.sweeps.items():
        symbol = "β/λ" if name == "beta_over_lambda" else "K"
        points = sorted({v for sweep in by_policy.values() for v in sweep})
        finite = [v for v in points if math.isfinite(v)]
        at = {v: v for v in finite} | ({math.inf: max(finite or [1.0]) * 10} if math.inf in points else {})  # ∞ one decade right
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for policy, sweep in sorted(by_policy.items()):
            keys = [v for v in points if v in sweep]
            stats = [mean_ci95(sweep[k]) for k in keys]
            ax.errorbar([at[k] for k in keys], [100 * s.mean for s in stats], marker="o", capsize=4, label=policy,
                        yerr=[0 if math.isnan(s.half_width) else 100 * s.half_width for s in stats])
        ax.set_xscale("log")
        ax.set_xticks(list(at.values()), [("∞" if math.isinf(k) else f"{k:g}") for k in at])
        ax.set_xlabel(symbol)
        ax.set_ylabel("PGR (%)")
        ax.set_title(f"PGR vs {symbol} (fig. {5 if name == 'beta_over_lambda' else 6})")
        ax.legend(fontsize=8)
        save(fig, f"pgr_vs_{name}.png")

    points = {n: r.kl_win for n, r in report.policies.items() if r.kl_win}
    if points:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, rows in points.items():
            ax.scatter([kl for _, kl, _ in rows], [100 * w for _, _, w in rows], label=name)
        ax.set_xlabel("KL(π‖π_ref_strong), k3 estimate")
        ax.set_ylabel("win-rate vs π_ref_strong (%)")
        ax.set_title("Win-rate vs KL over checkpoints (fig. 9)")
        ax.legend(fontsize=8)
        save(fig, "winrate_vs_kl.png")
    pair = [n for n in MATCHED_KL if n in report.policies and report.policies[n].kl_gold]
    if len(pair) == 2:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in pair:
            for seed in sorted({s for s, *_ in report.policies[name].kl_gold}):
                rows = sorted((kl, p) for s, _, kl, p in report.policies[name].kl_gold if s == seed)
                ax.plot([kl for kl, _ in rows], [p for _, p in rows], marker="o", label=f"{name} (seed {seed})")
        ax.set_xlabel("KL(π‖π_ref_strong), k3 estimate")
        ax.set_ylabel("gold reward P(π)")
        ax.set_title("EVE vs DPO with the weak reward at equal KL (§11.2)")
        ax.legend(fontsize=7)
        save(fig, "gold_vs_kl_eve_dpo.png")
    return written


# ----------------------------------------------------------------------------------------- render
MATCHED_KL = ("eve", "dpo_weak_reward")  # §11.2 compares these two at equal KL, not EVE with naive SFT


def matched_kl_rows(report: Report, method: str = "eve", baseline: str = "dpo_weak_reward") -> list[dict[str, str]]:
    """Per seed: the method's final (KL, P), and the baseline's P at that KL, linearly interpolated
    between its checkpoints (none where the method's KL lies outside the baseline's checkpoints)."""
    if method not in report.policies or baseline not in report.policies:
        return []
    rows = []
    for seed in sorted({s for s, *_ in report.policies[method].kl_gold}):
        ours = max((f, kl, p) for s, f, kl, p in report.policies[method].kl_gold if s == seed)  # the final checkpoint
        curve = sorted((kl, p) for s, _, kl, p in report.policies[baseline].kl_gold if s == seed)
        at = float(np.interp(ours[1], *zip(*curve))) if curve and curve[0][0] <= ours[1] <= curve[-1][0] else math.nan
        rows.append({"seed": str(seed), f"KL({method})": f"{ours[1]:.2f}", f"P({method})": f"{ours[2]:.3f}",
                     f"P({baseline}) at that KL": "–" if math.isnan(at) else f"{at:.3f}",
                     "difference": "–" if math.isnan(at) else f"{ours[2] - at:+.3f}",
                     f"KL range of {baseline}": f"{curve[0][0]:.2f}–{curve[-1][0]:.2f}" if curve else "–"})
    return rows


def headline(report: Report, method: str = "eve", baseline: str = "naive_sft") -> str:
    """The paper's main comparison (fig. 3, 4) in one sentence: EVE against naive SFT."""
    if method not in report.policies:
        return ""
    ours = mean_ci95(report.policies[method].pgr)
    if baseline not in report.policies:
        return f"**EVE: PGR {ours}** (this run evaluated no naive SFT)."
    theirs = mean_ci95(report.policies[baseline].pgr)
    paired = next((row for row in report.paired_rows(method) if row["baseline"] == baseline), None)
    difference = "" if paired is None else (f"; paired by seed, EVE − naive SFT = {paired[f'PGR({method}) − PGR(baseline)']}"
                                            f" (EVE ahead on {paired[f'seeds {method} is ahead']} seeds)")
    return f"**EVE: PGR {ours}; naive SFT: PGR {theirs}{difference}.**"


def render_markdown(report: Report, images: list[Path], title: str, sections: tuple[list[str], ...] = ()) -> str:
    """`sections`: further Markdown blocks (lines) placed after the tables, before the warnings."""
    top = headline(report)
    lines = [f"# {title}", "", *([top, ""] if top else []),
             "PGR = (P(π) − P(π_weak)) / (P(π_strong) − P(π_weak)) on the gold reward (§9.5); "
             "win-rate against the strong base π_ref_strong (ties ½); KL by the k3 estimator (§9.3). "
             "Mean ± 95 % CI over seeds.", "", *_markdown_table(report.table_rows(), empty_header=["policy"])]
    paired = report.paired_rows()
    if paired:
        lines += ["", "**EVE against each baseline, paired by seed** (mean ± 95 % CI of the per-seed difference)", "",
                  *_markdown_table(paired)]
    matched = matched_kl_rows(report)
    if matched:
        lines += ["", "**EVE against DPO with the weak reward at equal KL** (§11.2, fig. 9): DPO's gold reward "
                  "interpolated between its checkpoints at EVE's final KL (`evaluation.kl_checkpoints: all` gives DPO a curve)",
                  "", *_markdown_table(matched)]
    for name, by_policy in report.sweeps.items():
        policies = sorted(by_policy)
        lines += ["", f"| {'β/λ' if name == 'beta_over_lambda' else 'K'} | " + " | ".join(f"PGR({p})" for p in policies) + " |",
                  "|---|" + "---|" * len(policies)]
        for k in sorted({v for sweep in by_policy.values() for v in sweep}):
            cells = [str(mean_ci95(by_policy[p][k])) if k in by_policy[p] else "–" for p in policies]
            lines.append(f"| {'∞' if math.isinf(k) else f'{k:g}'} | " + " | ".join(cells) + " |")
    for section in sections:
        lines += ["", *section]
    if report.warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in report.warnings]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def _markdown_table(rows: list[dict[str, str]], empty_header: list[str] | None = None) -> list[str]:
    header = list(rows[0]) if rows else (empty_header or [])
    return (["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(_cell(row[h]) for h in header) + " |" for row in rows])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a policy label with a pipe must not split its row


def render_html(markdown_text: str, images: list[Path]) -> str:
    """A self-contained page: the Markdown rendered by python-markdown (tables), every figure the
    Markdown names inlined as a data URI, so it can be mailed or opened from MLflow. Raw HTML in
    the Markdown (a label, a warning) is escaped, never rendered."""
    import markdown

    inline = {p.name: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in images}
    body = markdown.markdown(html.escape(markdown_text, quote=False), extensions=["tables"], output_format="html")
    body = re.sub(r'src="([^"]+)"', lambda m: f'src="{inline.get(Path(m.group(1)).name, m.group(1))}"', body)
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}td,th{border:1px solid #ccc;padding:.2em .6em}"
             "table{border-collapse:collapse}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>w2s report</title><style>{style}</style></head><body>{body}</body></html>\n"
