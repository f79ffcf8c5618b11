"""Reading the Parquet shards and model folders of upstream artifacts."""

from __future__ import annotations

from pathlib import Path

from w2s.artifacts import ArtifactRef, ArtifactStore, Manifest, MANIFEST


def shard_paths(ref: ArtifactRef, store: ArtifactStore, prefix: str = "shards/") -> list[tuple[str, Path]]:
    """(relative path, local path) of an artifact's data shards, in manifest order."""
    folder = store.materialise(ref)
    manifest = Manifest.model_validate_json((folder / MANIFEST).read_text())
    return [(f.path, folder / f.path) for f in manifest.files if f.path.startswith(prefix) and f.path.endswith(".parquet")]


def model_dir(ref: ArtifactRef, store: ArtifactStore) -> Path:
    """The HF folder inside a model artifact (stages save models under `model/`)."""
    folder = store.materialise(ref) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{ref.stage} artifact {ref.uri} holds no model/ folder")
    return folder
