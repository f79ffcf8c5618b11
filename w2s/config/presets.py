"""The configs that ship with w2s: `configs/*.yaml`, the embedded default `pipeline_config.yaml` and
the DeepSpeed templates. In a checkout `presets/` links to the repository's `configs/`; an installed
wheel carries copies (pyproject.toml package-data), so `--config tiny` works without a checkout.

    w2s run --config tiny            # = configs/tiny.yaml, wherever w2s is installed
"""

from __future__ import annotations

from pathlib import Path

PRESETS = Path(__file__).resolve().parent / "presets"
EMBEDDED_DEFAULT = PRESETS / "pipeline_config.yaml"
DEEPSPEED_TEMPLATES = PRESETS / "deepspeed"


def names() -> list[str]:
    return sorted(path.stem for path in PRESETS.glob("*.yaml"))


def resolve(path: str | Path) -> Path:
    """`path` itself when it exists or names a folder; else the shipped preset of that name
    (`tiny`, `tiny.yaml`, `configs/tiny.yaml`); else `path` unchanged (its reader reports it)."""
    given = Path(path).expanduser()
    if given.exists() or given.parent not in (Path("."), Path("configs")):
        return given
    return next((c for c in (PRESETS / given.name, PRESETS / f"{given.name}.yaml") if c.is_file()), given)
