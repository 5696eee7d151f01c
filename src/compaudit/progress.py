"""Progress bars on a terminal, sparse plain lines in CI logs.

On a terminal (stderr is a TTY) a long step shows a tqdm bar that disappears when it ends. Elsewhere
(CI, a redirected log) it logs, on the ``compaudit`` logger at INFO, at most one line every
:data:`LOG_EVERY` seconds while it runs and one line when it ends; a step that ends within
:data:`LOG_EVERY` seconds logs nothing, so CI logs stay short.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("compaudit")

#: seconds between two log lines of one step when stderr is not a terminal; a step that takes less
#: logs nothing at all
LOG_EVERY = 10.0

#: the clock of the log lines (seconds, monotonic); tests replace it
clock = time.monotonic


def on_terminal() -> bool:
    """Whether stderr is a terminal (bars) rather than a log file or a pipe (plain lines)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Yield every item of ``iterable``, in order and once, consuming it exactly as a plain ``for``
    loop would, while showing progress: a bar when stderr is a terminal; otherwise at most one log
    line every :data:`LOG_EVERY` seconds (``desc: n/total (12s)``) and, when at least one was
    logged, one at the end (``desc: n/n done in 95s``), so CI logs stay short and readable. A loop
    left early (``break``, an exception) logs no end line."""
    if not enabled:
        yield from iterable
        return
    if on_terminal():
        yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
        return
    of = f"/{total}" if total else ""
    start = last = clock()
    logged = False
    n = 0
    for item in iterable:
        yield item
        n += 1
        now = clock()
        if now - last >= LOG_EVERY:
            last = now
            logged = True
            if n != total:  # the last item gets the end line only
                log.info("%s: %d%s (%.0fs)", desc, n, of, now - start)
    if logged:
        log.info("%s: %d/%d done in %.0fs", desc, n, n, clock() - start)


@contextmanager
def stage(desc: str, *, enabled: bool = True) -> Iterator[None]:
    """Progress of one long step that is not a loop (a t-SNE fit): a bar of one step while it runs
    when stderr is a terminal; otherwise one log line at the end (``desc: done in 42s``) if it took
    :data:`LOG_EVERY` seconds or more, and nothing if it took less or failed."""
    if not enabled:
        yield
        return
    if on_terminal():
        with tqdm(total=1, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr) as bar:
            yield
            bar.update(1)
        return
    start = clock()
    yield
    took = clock() - start
    if took >= LOG_EVERY:
        log.info("%s: done in %.0fs", desc, took)
