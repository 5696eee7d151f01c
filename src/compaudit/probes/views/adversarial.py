"""The adversarial probe's section: every metric, the gradient-masking evidence, and robust
accuracy against attack strength."""

from __future__ import annotations

from collections import defaultdict

from compaudit import imaging
from compaudit.elements import Cell, Figure, Section, SectionData, Table, generic_section, to_csv
from compaudit.units import scale


def section(data: SectionData) -> Section:
    """Every metric (variants as rows), then the masking checks and one curve per attack."""
    out = generic_section(data)
    checks = masking_checks(data)
    if checks is not None:
        out.add(checks)
    for fig in robustness_curves(data):
        out.add(fig)
    return out


def masking_checks(data: SectionData) -> Table | None:
    """Every gradient-masking check of every variant, failed ones first: the evidence behind the
    verdict (Carlini et al. 2019), each with its numbers."""
    rows: list[list[Cell]] = []
    for v in data.variants:
        found = data.tables.get(v, {}).get("masking_checks", [])
        for r in sorted(found, key=lambda r: bool(r.get("passed"))):
            passed = bool(r.get("passed"))
            rows.append(
                [
                    Cell(v),
                    Cell(str(r.get("check", ""))),
                    Cell(str(r.get("verdict", "gradient masking"))),
                    Cell(str(r.get("route", ""))),
                    Cell("passed" if passed else "FAILED", 1.0 if passed else 0.0, "" if passed else "worst"),
                    Cell(str(r.get("detail", ""))),
                ]
            )
    if not rows:
        return None
    return Table(
        "Gradient-masking checks: the measured evidence behind each verdict",
        ["Variant", "Check", "Evidence of", "Route", "Result", "Numbers"],
        rows,
        note="A variant is flagged for gradient masking when a check of that kind fails (Athalye et al. "
        "2018; Carlini et al. 2019); a failed convergence check says the attack was too short, not that "
        "the model masks its gradients. "
        "That a deployed model (int8 kernels, an ONNX Runtime or OpenVINO file) has no gradient path "
        "is information, not evidence: its naive "
        "numbers are flagged because BPDA, transfer or an unbounded attack measure far lower accuracy.",
    )


def robustness_curves(data: SectionData) -> list[Figure]:
    """One figure per attack with two or more strengths: robust accuracy against eps, one line per
    variant, on the per-sample worst case over routes (or the only route)."""
    plt = imaging.plt()

    # (attack) -> variant -> eps -> (route -> value)
    curves: dict[str, dict[str, dict[float, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in data.records:
        if r["metric"] != "robust_accuracy" or "sanity" in str(r.get("route")):
            continue
        curves[r["attack"]][r["variant"]].setdefault(float(r["eps"]), {})[str(r["route"])] = float(r["value"])
    k, suffix = scale(data.unit("robust_accuracy"))
    figures: list[Figure] = []
    for attack, by_variant in curves.items():
        if max((len(v) for v in by_variant.values()), default=0) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for variant, by_eps in by_variant.items():
            xs = sorted(by_eps)
            ys = []
            for e in xs:
                routes = by_eps[e]
                ys.append(routes.get("worst", min(routes.values())))
            ax.plot(xs, [k * y for y in ys], marker="o", label=variant)
        ax.set_xlabel("eps (attack strength)")
        ax.set_ylabel(f"robust accuracy{suffix}, worst route")
        ax.set_title(f"{attack}: robust accuracy vs eps")
        ax.set_ylim(-0.02 * k, 1.02 * k)
        if (
            all(e > 0 for v in by_variant.values() for e in v)
            and max(max(v) for v in by_variant.values())
            / max(min(min(v) for v in by_variant.values()), 1e-12)
            > 50
        ):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(by_variant) > 6 else 1, loc="best")
        rows = [
            {"variant": v, "eps": e, "robust_accuracy": routes.get("worst", min(routes.values()))}
            for v, by_eps in by_variant.items()
            for e, routes in sorted(by_eps.items())
        ]
        figures.append(Figure(f"{attack}: robust accuracy vs eps", imaging.png(fig), to_csv(rows)))
        plt.close(fig)
    return figures
