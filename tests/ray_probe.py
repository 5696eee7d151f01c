"""Plugins for tests/test_ray.py that Ray workers can import (the tests folder is on their
``PYTHONPATH``): a probe that kills its own worker process while its marker file exists, and a
compression method that always fails. The tests register them only while they run
(``PROBES.temporary``, ``METHODS.temporary``), so no other test sees them; the Ray executor
registers them in its workers itself."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from torch import nn

from compaudit.compress import CompressContext, Method
from compaudit.probes import Probe, ProbeContext, ProbeParams, ProbeResult
from compaudit.variant import Variant


class KillParams(ProbeParams):
    #: while this file exists, measuring ``variant`` kills the process
    marker: str
    variant: str


class KillWorker(Probe):
    """Reports 1.0, or kills its process (SIGKILL) on ``variant`` while ``marker`` exists."""

    Params: ClassVar[type[ProbeParams]] = KillParams
    units: ClassVar[Mapping[str, str]] = {"alive": "flag"}

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        assert isinstance(p, KillParams)
        if variant.name == p.variant and Path(p.marker).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        res = ProbeResult()
        res.add("alive", 1.0)
        return res


class BreakBuild(Method):
    """Raises on every model it is applied to: a variant with this step never gets built."""

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        raise RuntimeError("broken on purpose")
