"""The report: one self-contained HTML page per run."""

from compaudit.report.build import collect, render_report, write_report

__all__ = ["collect", "render_report", "write_report"]
