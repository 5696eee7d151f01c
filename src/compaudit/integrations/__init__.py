"""Integrations with other tools, each behind its own extra.

A module here imports its tool only when one of its functions is called, so ``import compaudit``
and every command work without it; a call without the tool installed raises a
:class:`~compaudit.errors.CompauditError` naming the extra to install.

- :mod:`compaudit.integrations.mlflow`: log a run folder to MLflow (extra ``mlflow``).
"""
