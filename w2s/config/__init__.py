"""Every config schema and its one loader, in one package.

- `pipeline`: the EVE `PipelineConfig` and its sections (the single source of defaults);
- `data`: the task data (synthetic task, or real preferences and prompt sources via `datasets`);
- `engines`: how stages run (generation, training engines) and how Prefect runs them (orchestration);
- `classification`, `theory`: the schemas of the two side experiments, around the shared `RunConfig`;
- `base`: the strict `Section` base class and shared types;
- `loading`: `load_config(path, overrides, schema=…)` for every schema, the YAML hardening and the
  preflight checks.

`from w2s.config import PipelineConfig, DataConfig, …` keeps working: the EVE sections are
re-exported here.
"""

from w2s.config.pipeline import *  # noqa: F401,F403
