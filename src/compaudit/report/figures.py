"""Figures of the report, rendered with matplotlib (Agg) to inline PNG data URIs: the page stays
one self-contained file."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from typing import Any


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def robustness_curves(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One figure per attack with two or more strengths: robust accuracy against eps, one line per
    variant, on the per-sample worst case over routes (or the only route). Returns (title, uri)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (attack) -> variant -> eps -> (route -> value)
    data: dict[str, dict[str, dict[float, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["probe"] != "adversarial" or r["metric"] != "robust_accuracy" or "sanity" in str(r.get("route")):
            continue
        data[r["attack"]][r["variant"]].setdefault(float(r["eps"]), {})[str(r["route"])] = float(r["value"])
    figures: list[tuple[str, str]] = []
    for attack, by_variant in data.items():
        if max((len(v) for v in by_variant.values()), default=0) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for variant, by_eps in by_variant.items():
            xs = sorted(by_eps)
            ys = []
            for e in xs:
                routes = by_eps[e]
                ys.append(routes.get("worst", min(routes.values())))
            ax.plot(xs, [100 * y for y in ys], marker="o", label=variant)
        ax.set_xlabel("eps (attack strength)")
        ax.set_ylabel("robust accuracy (%), worst route")
        ax.set_title(f"{attack}: robust accuracy vs eps")
        ax.set_ylim(-2, 102)
        if (
            all(e > 0 for v in by_variant.values() for e in v)
            and max(max(v) for v in by_variant.values())
            / max(min(min(v) for v in by_variant.values()), 1e-12)
            > 50
        ):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(by_variant) > 6 else 1, loc="best")
        figures.append((f"{attack}: robust accuracy vs eps", _png(fig)))
        plt.close(fig)
    return figures
