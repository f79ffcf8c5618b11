"""Stage lists, derived rather than written down: each flow's stages in call order, traced from the
flow itself on its default config (nothing is computed), and every declared stage of every flow
(the registry `import tasks` fills).

    w2s stages [--flow baselines]
"""

from __future__ import annotations

import inspect
from functools import cache

import tasks
from flows import FLOWS, flow_named  # noqa: F401  (re-exported: the stage lists are per flow)
from w2s.orchestration import flow_stages


@cache
def stages_of(name: str) -> tuple[str, ...]:
    """The stages flow `name` runs, in order, on the config its run form starts from."""
    flow_fn = flow_named(name)
    default = inspect.signature(flow_fn.fn).parameters["config"].default
    return flow_stages(flow_fn, default)


def __getattr__(name: str):
    """Lists tests and the CLI read, computed on first use."""
    if name == "STAGES":
        return stages_of("eve")
    if name == "BASELINE_STAGES":
        return stages_of("baselines")
    if name == "EVE_TRAINING":  # the EVE pipeline proper, up to the student
        eve = stages_of("eve")
        return eve[: eve.index("student") + 1]
    if name == "BASELINE_POLICIES":  # the policies only the baselines flow trains
        return tuple(s for s in stages_of("baselines") if tasks.all_stages()[s].evaluated_as and s not in stages_of("eve"))
    if name == "ALL_STAGES":
        return tuple(tasks.all_stages())
    raise AttributeError(name)
