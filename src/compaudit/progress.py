"""Progress bars on a terminal, sparse plain lines in CI logs."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("compaudit")


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Wrap ``iterable`` in a bar when stderr is a terminal; otherwise log at most one line every
    10 seconds plus one at the end, so CI logs stay short and readable."""
    if not enabled:
        yield from iterable
        return
    if sys.stderr.isatty():
        yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for n, item in enumerate(iterable, start=1):
        yield item
        now = time.monotonic()
        if now - last >= 10.0:
            last = now
            of = f"/{total}" if total else ""
            log.info("%s: %d%s (%.0fs)", desc, n, of, now - start)
