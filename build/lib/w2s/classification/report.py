"""The closing summary of the classification flow: one JSON, a Markdown table, and three plots
(PGR bars; accuracy and ECE vs epochs; linear probe vs fine-tune)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def summarise(teacher: dict, ceiling: dict, w2s: dict, bootstrap: dict, probes: dict, epochs: dict) -> dict[str, Any]:
    final = bootstrap["steps"][-1]
    return {
        "weak": {"acc": teacher["acc"], "ece": teacher["ece"]},
        "ceiling": {"acc": ceiling["acc"], "ece": ceiling["ece"]},
        "w2s_ce": w2s["ce"],
        "w2s_aux": w2s["aux"],
        "bootstrap": bootstrap["steps"],
        "bootstrap_final": final,
        "probes": probes,
        "epochs": epochs["rows"],
    }


def markdown(s: dict[str, Any]) -> str:
    def row(name: str, m: dict) -> str:
        fmt = lambda k: f"{m[k]:.3f}" if k in m else "–"  # noqa: E731
        return f"| {name} | {fmt('acc')} | {fmt('ece')} | {fmt('pgr')} | {fmt('weak_error_agreement')} |"

    lines = ["| model | test acc | ECE | PGR | agreement with weak errors |", "|---|---|---|---|---|",
             row("weak (gt, half A)", s["weak"]), row("strong ceiling (gt, half B)", s["ceiling"]),
             row("w2s, CE on weak labels", s["w2s_ce"]), row("w2s, aux confidence loss", s["w2s_aux"])]
    lines += [row(f"bootstrap → {step['model'].replace('final', 'strong')}", step) for step in s["bootstrap"]]
    lines += ["", "| probe | test acc |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in s["probes"].items()]
    lines += ["", "| epochs | w2s acc | w2s ECE | PGR |", "|---|---|---|---|"]
    lines += [f"| {int(r['epochs'])} | {r['acc']:.3f} | {r['ece']:.3f} | {r['pgr']:.3f} |" for r in s["epochs"]]
    return "\n".join(lines) + "\n"


def plot_pgr(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["CE", "aux loss", "bootstrap"]
    values = [s["w2s_ce"]["pgr"], s["w2s_aux"]["pgr"], s["bootstrap_final"]["pgr"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(names, values, color=["#888", "#3a7", "#37a"])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("performance gap recovered")
    ax.set_title(f"weak {s['weak']['acc']:.2f} → ceiling {s['ceiling']['acc']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_epochs(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epochs"] for r in s["epochs"]]
    fig, (acc_ax, ece_ax) = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key in ((acc_ax, "acc"), (ece_ax, "ece")):
        ax.plot(epochs, [r[key] for r in s["epochs"]], "o-", label="w2s student")
        ax.axhline(s["weak"][key], color="r", ls="--", label="weak")
        ax.axhline(s["ceiling"][key], color="g", ls=":", label="strong ceiling")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs")
        ax.set_ylabel("test accuracy" if key == "acc" else "ECE")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_probes(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(s["probes"])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(names, [s["probes"][n] for n in names], color="#37a")
    ax.axhline(s["weak"]["acc"], color="r", ls="--", label="weak")
    low = min([s["weak"]["acc"], *s["probes"].values()])
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
