"""The demo report in a real browser: headless Chromium opens it from disk.

It must load with no console errors, no uncaught exceptions, no failed loads and no request that
leaves the file (everything inline: ``file:`` and ``data:`` only); the summary table sorts on a
click; a screenshot is not blank; the report stays under 10 MB with every image a ``data:`` URI.

The browser is Debian's ``chromium``; the set-up installs it with apt-get when it is missing. When it
still cannot be had the browser tests are skipped, or fail where ``COMPAUDIT_REQUIRE_BROWSER=1``
(CI sets it). The demo runs once per session (the ``demo_run`` fixture, shared with test_demo.py).

To regenerate the README screenshot (the top of the demo report, 1300 px wide)::

    COMPAUDIT_SCREENSHOT=docs/report.png .venv/bin/pytest tests/test_browser.py
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdp import Chromium, Page
from tests.conftest import DemoRun

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 10 * 1024 * 1024


# ---------------------------------------------------------------- the browser, installed if missing


def _run_logged(cmd: list[str], timeout: float, notes: list[str]) -> bool:
    log.warning("browser set-up: running %s", " ".join(cmd))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        notes.append(f"`{' '.join(cmd)}` did not finish: {e}")
        log.warning("browser set-up: %s", notes[-1])
        return False
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    notes.append(f"`{' '.join(cmd)}` exited {proc.returncode}: {' | '.join(tail)}")
    log.warning("browser set-up: %s", notes[-1])
    return proc.returncode == 0


def _install_chromium(notes: list[str]) -> str | None:
    """Install Debian's chromium with apt-get (``sudo -n`` unless root); its path, or None."""
    if shutil.which("apt-get") is None:
        notes.append("chromium is not installed and there is no apt-get to install it")
        return None
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            notes.append("chromium is not installed, and installing it needs root or sudo")
            return None
        prefix = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    install = [*prefix, "apt-get", "install", "-y", "chromium"]
    # the package lists may be missing or stale (a fresh container): update once and retry
    if not _run_logged(install, 900, notes) and _run_logged([*prefix, "apt-get", "update"], 300, notes):
        _run_logged(install, 900, notes)
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of ``chromium``, installed first when missing; skip (or fail, see above) without one."""
    found = shutil.which("chromium")
    if found:
        return found
    notes: list[str] = []
    found = _install_chromium(notes)
    if found:
        return found
    reason = "no headless browser for the report tests: " + "; ".join(notes)
    if os.environ.get("COMPAUDIT_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (COMPAUDIT_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def report(demo_run: DemoRun) -> Path:
    path = demo_run.out / "report.html"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def page(report: Path, chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """The demo report, loaded in a headless Chromium that lives as long as this module's tests."""
    stderr = tmp_path_factory.mktemp("chromium") / "stderr.txt"  # a harmless dbus complaint, mostly
    with Chromium(chromium, deadline_s=120, window=(1300, 2000), stderr=stderr) as browser:
        yield browser.open(report.as_uri())


# ---------------------------------------------------------------- the report file


def test_report_is_under_10_mb_with_inline_images(report: Path) -> None:
    size = report.stat().st_size
    assert size < MAX_REPORT_BYTES, f"the demo report is {size / 2**20:.1f} MiB"
    html = report.read_text(encoding="utf-8")
    srcs = re.findall(r"<img\b[^>]*?\bsrc\s*=\s*[\"']?([^\"'\s>]*)", html, flags=re.IGNORECASE)
    assert srcs, "the demo report has no images"
    assert [s[:80] for s in srcs if not s.startswith("data:")] == []


# ---------------------------------------------------------------- the report in a browser


def test_report_loads_without_errors_or_outside_requests(page: Page, report: Path) -> None:
    assert page.problems() == []
    requests = page.requests()
    assert report.as_uri() in requests
    assert [u[:200] for u in requests if not u.startswith(("file:", "data:"))] == []


def test_screenshot_is_not_blank(page: Page, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    png = page.screenshot()
    shot = tmp_path / "report.png"
    shot.write_bytes(png)
    if target := os.environ.get("COMPAUDIT_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.width >= 1000 and image.height >= 1000, image.size
    rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 64, f"{len(colours or [])} colours: blank?"
    assert ImageStat.Stat(rgb.convert("L")).stddev[0] > 15, "the screenshot is nearly uniform"
    assert page.problems() == []


#: the summary table's columns: how many body cells have a numeric data-value, out of how many rows
_COLUMNS = """(() => {
  const table = document.querySelector("#summary table.sortable");
  if (!table) return null;
  const rows = Array.from(table.tBodies[0].rows);
  return Array.from(table.tHead.rows[0].cells).map((th, i) => ({
    index: i,
    name: th.textContent.trim(),
    rows: rows.length,
    valued: rows.filter(r => r.cells[i] && r.cells[i].dataset.value !== undefined
                             && Number.isFinite(parseFloat(r.cells[i].dataset.value))).length,
  }));
})()"""

#: each body row as [its first cell's text, column COL's data-value as a number, or null where it has none]
_ROWS = """Array.from(document.querySelector("#summary table.sortable").tBodies[0].rows).map(r => [
  r.cells[0].textContent.trim(),
  r.cells[COL].dataset.value === undefined ? null : parseFloat(r.cells[COL].dataset.value)])"""

_HEADER = """document.querySelector("#summary table.sortable").tHead.rows[0].cells[COL]"""

Row = tuple[str, float | None]


def _rows(page: Page, col: int) -> list[Row]:
    rows = page.evaluate(_ROWS.replace("COL", str(col)))
    return [(str(k), None if v is None else float(v)) for k, v in rows]


def _values(rows: list[Row]) -> list[float]:
    """The column's numbers, in row order (rows without one, shown as a dash, left out)."""
    return [v for _, v in rows if v is not None]


def _key(row: Row) -> tuple[str, float]:
    return row[0], -1e300 if row[1] is None else row[1]


def test_summary_table_sorts_on_a_click(page: Page) -> None:
    columns: list[dict[str, Any]] | None = page.evaluate(_COLUMNS)
    assert columns, "no #summary table.sortable in the report"
    # numeric columns: numbers in most rows (a variant without a value shows a dash)
    numeric = [c for c in columns if c["valued"] >= max(2, c["rows"] // 2)]
    assert numeric, f"no numeric column in the summary table: {[c['name'] for c in columns]}"
    # prefer the fullest column whose numbers are not in ascending order yet, so the click moves rows
    numeric.sort(key=lambda c: -c["valued"])

    def unsorted(c: dict[str, Any]) -> bool:
        values = _values(_rows(page, c["index"]))
        return values != sorted(values)

    column = next((c for c in numeric if unsorted(c)), numeric[0])
    col, name = column["index"], column["name"]
    before = _rows(page, col)
    values = _values(before)
    assert len(set(values)) > 1, f"column {name!r} has one value only"

    header = _HEADER.replace("COL", str(col))
    # _sortable.js: the first click sorts by data-value ascending, the next one descending
    page.evaluate(header + ".click()")
    ascending = _rows(page, col)
    assert _values(ascending) == sorted(values), name
    assert all(v is None for _, v in ascending[len(values) :]), "cells without a number go last"
    assert sorted(ascending, key=_key) == sorted(before, key=_key), "rows were not moved whole"
    if values != sorted(values):
        assert ascending != before
    page.evaluate(header + ".click()")
    descending = _rows(page, col)
    assert _values(descending) == sorted(values, reverse=True), name
    assert all(v is None for _, v in descending[len(values) :]), "cells without a number go last"
    assert sorted(descending, key=_key) == sorted(before, key=_key)
    assert "sorted-desc" in page.evaluate(header + ".className").split()
    assert page.problems() == []
