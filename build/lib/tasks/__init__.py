"""The stages of every flow. Importing this package declares them all in `w2s.stage.REGISTRY`
(each module here declares its stages with `@stage`; one evaluation stage is made per policy), so
any code that can import one stage sees the whole registry: offload, retries and `--until` are
validated against it."""

import importlib
import pkgutil

from w2s.stage import REGISTRY, Stage


def _declare_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    from tasks.evaluate import declare_evaluations

    declare_evaluations()


_declare_all()


def all_stages() -> dict[str, Stage]:
    """Every declared stage of every flow, by name."""
    return dict(REGISTRY)
