"""What a run would do, without computing: each stage's cache hit or miss, and why it misses.

    w2s plan --config pipeline_config.yaml --set weights.beta_over_lambda=2

A flow's body runs with the `Planner` as its runner (w2s/orchestration/: `trace_flow`). A stage
whose inputs are all existing artifacts gets its real key and a real lookup; a hit hands its real
reference on, so the next key is real too. A miss is explained against the closest artifact the
root holds for that stage (fewest differing parts): the stage version, the config keys whose value
changed (old → new), the inputs whose digest changed, or a local file the config names whose
content changed. A stage fed by a miss is a miss too ("input X is recomputed"): its key depends on
bytes that do not exist yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from w2s.artifacts import ArtifactRef, Manifest, canonical_json, is_hidden, store_for
from w2s.stage import Stage, artifact_inputs, config_slice, input_digests
from w2s.tracking import flatten

PENDING = "pending://"


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    cache: str  # "hit" | "miss"
    why: str  # empty for a hit
    uri: str = ""


def differences(version: int, config: Mapping[str, Any], inputs: Mapping[str, str], manifest: Manifest) -> list[str]:
    """What separates a wanted key's parts from an existing artifact's, in words."""
    found = []
    if manifest.version != version:
        found.append(f"stage version {manifest.version} → {version}")
    old, new = flatten(manifest.config), flatten(_jsonable(config))
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            found.append(f"config {key}: {old.get(key, '<absent>')} → {new.get(key, '<absent>')}")
    for name in sorted(set(manifest.inputs) | set(inputs)):
        if manifest.inputs.get(name) != inputs.get(name):
            found.append(f"input {name} changed")
    return found


def _jsonable(config: Mapping[str, Any]) -> Any:
    # a manifest's config went through JSON: tuples became lists, so compare like with like
    return json.loads(canonical_json(dict(config)))


def existing_manifests(root: str, stage: str) -> list[Manifest]:
    store = store_for(root)
    base = store.remote_path(stage, "")
    try:
        keys = [path.rstrip("/").rsplit("/", 1)[-1] for path in store.fs.ls(base, detail=False)]
    except FileNotFoundError:
        return []
    # hidden entries (.locks/) are no artifacts; a folder without a manifest reads as None
    manifests = [m for key in keys if not is_hidden(key) and (m := store.read_manifest(stage, key)) is not None]
    return sorted(manifests, key=lambda m: m.created_at, reverse=True)


def why_missed(root: str, declared: Stage, cfg: Any, inputs: Mapping[str, ArtifactRef]) -> str:
    manifests = existing_manifests(root, declared.name)
    if not manifests:
        return "never computed under this root"
    wanted = (declared.version, config_slice(cfg), input_digests(inputs))
    closest = min((differences(*wanted, m) for m in manifests), key=len)  # newest first: ties go to the newest
    if not closest:
        return "a file the config names changed content, or the artifact fails verification"
    return "; ".join(closest)


@dataclass
class Planner:
    """A stage runner (w2s.stage.use_runner) that looks up and explains but never computes."""

    root: str
    rows: list[PlannedStage] = field(default_factory=list)

    def __call__(self, declared: Stage, ctx: Any, config: Any, inputs: dict[str, Any]) -> ArtifactRef:
        cfg = declared.slice_of(config)
        refs = artifact_inputs(inputs)
        pending = [name for name, ref in refs.items() if ref.uri.startswith(PENDING)]
        if pending:
            return self._row(declared, "miss", f"input {', '.join(pending)} is recomputed")
        found = store_for(self.root).lookup(declared.name, declared.key(cfg, refs))
        if found is not None:
            self._add(PlannedStage(declared.name, "hit", "", found.uri))
            return found
        return self._row(declared, "miss", why_missed(self.root, declared, cfg, refs))

    def _add(self, row: PlannedStage) -> None:
        if row not in self.rows:  # a sweep calls a shared stage once per setting: one line
            self.rows.append(row)

    def _row(self, declared: Stage, cache: str, why: str) -> ArtifactRef:
        self._add(PlannedStage(declared.name, cache, why))
        return ArtifactRef(stage=declared.name, key="pending", uri=f"{PENDING}{declared.name}", digest="0" * 64)


def render(rows: list[PlannedStage]) -> str:
    width = max([5] + [len(row.stage) for row in rows])
    lines = [f"{'stage':<{width}}  plan  why", "-" * (width + 12)]
    lines += [f"{row.stage:<{width}}  {row.cache:<4}  {row.why}".rstrip() for row in rows]
    misses = sum(row.cache == "miss" for row in rows)
    lines.append(f"{len(rows) - misses} of {len(rows)} stages cached; {misses} would run")
    return "\n".join(lines)
