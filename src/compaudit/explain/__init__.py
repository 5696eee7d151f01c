"""Explaining models: saliency maps and their quality metrics, and feature-space structure."""

from compaudit.explain.layers import NotApplicableError
from compaudit.explain.saliency import SALIENCY, SaliencyMethod, explain, normalize

__all__ = ["SALIENCY", "NotApplicableError", "SaliencyMethod", "explain", "normalize"]
