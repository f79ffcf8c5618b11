"""Config sections of the task data: the embedded synthetic task or real preferences via `datasets`
(w2s/data/splits.py builds the splits; w2s/data/capacity.py checks they fit the data)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from w2s.config.base import MAX_COUNT, MAX_ROWS, Rows, Section, Seed
from w2s.content import content_input


class SyntheticTaskConfig(Section):
    """The embedded controlled-summarisation task (w2s/data/synthetic.py documents it)."""

    min_filler: int = Field(2, ge=0, le=MAX_COUNT, description="Filler sentences per post, lower bound.")
    max_filler: int = Field(5, ge=0, le=MAX_COUNT, description="Filler sentences per post, upper bound.")

    @model_validator(mode="after")
    def _bounds(self) -> SyntheticTaskConfig:
        if self.max_filler < self.min_filler:
            raise ValueError("max_filler must be >= min_filler")
        return self


class HFSource(Section):
    """Where `datasets.load_dataset` reads a table from (local files, or a hub name on a cluster)."""

    path: str = content_input(..., description="datasets.load_dataset path: 'parquet', 'json', 'csv', a local file or folder, or a hub name.")
    data_files: str | list[str] | None = content_input(None, description="Local data files (globs allowed); keyed by content.")
    name: str | None = None
    split: str = "train"


class HFPromptSource(HFSource):
    """Where the prompt-only splits (weak_demo, exemplar, student, test) come from."""

    prompt_column: str = "prompt"


class HFDataConfig(HFSource):
    """Real preference data through `datasets`."""

    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    text_format: Literal["tldr", "verbatim"] = Field(
        "tldr", description="tldr: prompts end with '\\nTL;DR:', completions start with one space and lose a leading "
        "'TL;DR:' (the CarperAI comparisons schema; w2s/text.py); verbatim: the columns as they are.")
    gold_labels: bool = Field(
        True, description="Relabel the preferences with the gold reward model, p(y1 ≻ y2) = σ(r1 − r2) (§9.1); "
        "false keeps the dataset's human labels.")
    prompts: HFPromptSource | None = Field(
        None, description="Unset: every split takes distinct prompts of this table, one preference pair per prompt. "
        "Set: the preferences are n_preference rows of this table (several pairs per prompt, as in the TL;DR "
        "comparisons) and the four prompt splits are distinct prompts of that source not among them.")


class DataConfig(Section):
    source: Literal["synthetic", "hf"] = "synthetic"
    seed: Seed = Field(0, description="Seed of the data splits; fixed across training seeds.")
    n_preference: Rows = Field(512, description="Gold-labelled preference pairs (weak SFT/DPO).")
    n_weak_demo: Rows = Field(128, description="Prompts the weak teacher answers (D_weak).")
    n_exemplar_pool: int = Field(8, ge=2, le=MAX_ROWS, description="Held-out prompts the 2 exemplars come from.")
    n_student: Rows = Field(128, description="Prompts the strong reference samples K times.")
    n_test: Rows = Field(64, description="Evaluation prompts (paper: 256).")
    synthetic: SyntheticTaskConfig = SyntheticTaskConfig()
    hf: HFDataConfig | None = None

    @model_validator(mode="after")
    def _source_needs_section(self) -> DataConfig:
        if self.source == "hf" and self.hf is None:
            raise ValueError("source 'hf' needs a data.hf section (path, columns)")
        return self
