"""Plugins for tests that Ray workers can import (the tests folder is on their ``PYTHONPATH``): a
probe that kills its own worker process while its marker file exists, a probe with a bug (it
divides by zero on one variant), and a compression method that always fails. The tests register
them only while they run (``PROBES.temporary``, ``METHODS.temporary``), so no other test sees
them; the Ray executor registers them in its workers itself."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import ClassVar

from torch import nn

from compaudit.compress import CompressContext, Method, MethodParams
from compaudit.probes import Probe, ProbeContext, ProbeParams, ProbeResult
from compaudit.results import MetricSpec
from compaudit.variant import Variant


class KillParams(ProbeParams):
    #: while this file exists, measuring ``variant`` kills the process
    marker: str
    variant: str


class KillWorker(Probe[KillParams]):
    """Reports 1.0, or kills its process (SIGKILL) on ``variant`` while ``marker`` exists."""

    Params: ClassVar[type[ProbeParams]] = KillParams
    metrics: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("alive", "flag"),)

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        if variant.name == p.variant and Path(p.marker).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        res = ProbeResult()
        res.add("alive", 1.0)
        return res


class BuggyParams(ProbeParams):
    #: the variant on which the probe divides by zero
    variant: str


class Buggy(Probe[BuggyParams]):
    """Reports 1.0, except on ``variant``, where a bug in it raises ZeroDivisionError."""

    Params: ClassVar[type[ProbeParams]] = BuggyParams
    metrics: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("ratio", "score"),)

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        res = ProbeResult()
        res.add("ratio", 1 / (0 if variant.name == self.params.variant else 1))
        return res


class BreakBuild(Method[MethodParams]):
    """Raises on every model it is applied to: a variant with this step never gets built."""

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        raise RuntimeError("broken on purpose")
