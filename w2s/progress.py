"""Progress of a long stage (sampling, scoring, training), for whoever listens.

Stage code makes its bar with `bar(...)`: a tqdm bar on the console, which also reports the fraction
done to the listener of the current context, at most every `every_s` seconds and at the end. The
Prefect adapter (w2s/orchestration/) listens and keeps a progress artifact of the task run up to
date; without a listener the bar is a plain tqdm bar. Core code never imports Prefect.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

Listener = Callable[[str, float], None]  # (description, fraction done in [0, 1])
_listener: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("w2s_progress", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class _ReportingBar(tqdm):
    def __init__(self, *args, every_s: float = 2.0, **kwargs):
        self._report_to, self._every_s, self._last = _listener.get(), every_s, 0.0
        super().__init__(*args, **kwargs)

    def update(self, n: float = 1) -> bool | None:
        shown = super().update(n)
        if self._report_to is not None and self.total:
            now = time.monotonic()
            if now - self._last >= self._every_s or self.n >= self.total:
                self._last = now
                self._report_to(str(self.desc), min(1.0, self.n / self.total))
        return shown


def bar(*args, **kwargs) -> tqdm:
    """A tqdm bar (same arguments) that also reports to the context's listener; under a quiet
    console (w2s/console.py) it draws on the terminal, not in the log file."""
    from w2s.console import terminal

    if "file" not in kwargs and terminal() is not None:
        kwargs["file"] = terminal()
    return _ReportingBar(*args, **kwargs)
