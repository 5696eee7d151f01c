"""Planning and executing experiments."""

from compaudit.run.local import RunSummary, prepare, run_experiment
from compaudit.run.plan import Plan, make_plan

__all__ = ["Plan", "RunSummary", "make_plan", "prepare", "run_experiment"]
