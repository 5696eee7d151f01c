"""compaudit: if I compress this CNN, what else changes besides test accuracy?

The public API, re-exported from the modules that implement it::

    from compaudit import load_experiment, run_experiment
    summary = run_experiment(load_experiment("exp.yaml"), out="runs/exp")

    import compaudit
    result = compaudit.audit(model, data, variants=["quantize_int8"], probes=["accuracy"])
    result.table(); result.report("audit.html")
"""

from compaudit._version import __version__
from compaudit.api import AuditResult, audit
from compaudit.compare import Comparison, compare_runs
from compaudit.compress import METHODS, CompressContext, Method, MethodParams
from compaudit.config import Experiment
from compaudit.data import DATASETS, ArrayDataset, DataBundle, DataSource, load_dataset
from compaudit.errors import CompauditError, ConfigError, DataError, MethodError, ModelError, ProbeError
from compaudit.export import export_frame, load_export
from compaudit.models import MODELS, build_model, load_checkpoint
from compaudit.probes import PROBES, Metric, Probe, ProbeContext, ProbeParams, ProbeResult
from compaudit.registry import Registry
from compaudit.run import RunSummary, load_experiment, make_plan, run_experiment
from compaudit.store import Store
from compaudit.train import fit
from compaudit.variant import Variant

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "PROBES",
    "ArrayDataset",
    "AuditResult",
    "Comparison",
    "CompauditError",
    "CompressContext",
    "ConfigError",
    "DataBundle",
    "DataError",
    "DataSource",
    "Experiment",
    "Method",
    "MethodError",
    "MethodParams",
    "Metric",
    "ModelError",
    "Probe",
    "ProbeContext",
    "ProbeError",
    "ProbeParams",
    "ProbeResult",
    "Registry",
    "RunSummary",
    "Store",
    "Variant",
    "__version__",
    "audit",
    "build_model",
    "compare_runs",
    "export_frame",
    "fit",
    "load_checkpoint",
    "load_dataset",
    "load_experiment",
    "load_export",
    "make_plan",
    "run_experiment",
]
