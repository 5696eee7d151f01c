"""Planning and executing experiments.

The package reads like its flow; each module imports only those before it:

- :mod:`~compaudit.run.plan`: content keys of every variant and (variant, probe) job;
- :mod:`~compaudit.run.prepare`: load the data, build the base model, check every input;
- :mod:`~compaudit.run.build`: train the baseline, build the variants, cache their weights;
- :mod:`~compaudit.run.jobs`: run one probe on one variant, keep the books;
- :mod:`~compaudit.run.local` and :mod:`~compaudit.run.ray` (with :mod:`~compaudit.run.worker`):
  the two executors, which share ``build`` and ``jobs`` and write through the
  :class:`~compaudit.results.ResultSink` protocol, never through each other;
- :mod:`~compaudit.run.select`: choose a sweep's level from the stored accuracies;
- :mod:`~compaudit.run.validate`: check an experiment against the plugins;
- :mod:`~compaudit.run.session`: :func:`run_experiment` (lock, metadata, executor, report).

**Error policy** (the same under both executors):

- *Bad input* (an experiment that does not validate, a missing data folder, a checkpoint of
  another architecture, a model factory that raises) and *any failure to build or train the
  baseline* (a training that diverges included) stop the run: :func:`run_experiment` raises a
  :class:`~compaudit.errors.CompauditError` whose message is one line (the command line prints it
  and exits with code 2), and removes what this call created: a run folder it created (with its
  ``results.sqlite``) is deleted, while a run folder being resumed is left as it was, its stored
  results intact, its status ``failed``.
- *A variant whose build raises* (any exception: a method that cannot apply, a fine-tuning that
  diverges, a bug) gives one error row per missing job of that variant, and *a probe that raises*
  (any exception, not only a ``CompauditError``) gives an error row for its job; the rest of the
  run goes on, the run's status is ``failed``, the command line exits with code 1, and a rerun
  retries exactly the failed jobs. Under Ray, a task whose worker dies gives the same error rows.
"""

from compaudit.run.jobs import RunSummary
from compaudit.run.plan import Plan, make_plan
from compaudit.run.prepare import Prepared, prepare
from compaudit.run.session import run_experiment
from compaudit.run.validate import load_experiment, validate

__all__ = [
    "Plan",
    "Prepared",
    "RunSummary",
    "load_experiment",
    "make_plan",
    "prepare",
    "run_experiment",
    "validate",
]
