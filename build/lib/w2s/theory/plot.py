"""Misfit-vs-gain scatter per (setting, loss), with the y = x line of the theorems (Agg backend)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TITLES = {"squared": "squared loss", "reverse_kl": "reverse KL", "forward_kl": "forward KL"}


def scatter(frame: pd.DataFrame, setting: str, loss: str, path: str | Path, fraction: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = frame[(frame["setting"] == setting) & (frame["loss"] == loss)]
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=120)
    ax.scatter(group["misfit"], group["gain"], s=12, alpha=0.7, label="task (test sample)")
    low = min(0.0, float(group["gain"].min()))
    high = max(float(group["misfit"].max()), float(group["gain"].max())) * 1.05
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="gain = misfit")
    ax.set_xlabel("misfit  (strong vs weak)")
    ax.set_ylabel("gain  (weak error − w2s error)")
    ax.set_title(f"{setting}, {TITLES.get(loss, loss)}: gain ≥ misfit on {fraction:.0%}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
