"""The built-in demo runs, stays fast, and reruns from its cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from compaudit import Experiment, run_experiment
from compaudit.cli import demo_experiment_text, export_rows
from tests.conftest import DemoRun


def test_demo_experiment_is_valid_and_covers_every_method_and_probe() -> None:
    from compaudit import METHODS, PROBES

    exp = Experiment.from_yaml_text(demo_experiment_text(), source="demo.yaml")
    # not in the demo: a user's own file (tests/test_deployed_file.py), the openvino extra's targets,
    # and onnx fp32, whose export onnx_int8 runs too (tests/test_runtimes.py)
    elsewhere = {"deployed_file", "openvino", "openvino_int8", "onnx"}
    assert {s.method for v in exp.variants for s in v.steps} == set(METHODS.names()) - elsewhere
    assert {p.name for p in exp.probes} == set(PROBES.names())


def test_demo_runs_and_reruns_from_cache(demo_run: DemoRun) -> None:
    exp, out, first = demo_run.experiment, demo_run.out, demo_run.first
    assert not first.failed and first.new == len(exp.probes) * (len(exp.concrete_variants()) + 1)
    rows = export_rows(out)
    acc = {r["variant"]: r["value"] for r in rows if r["metric"] == "accuracy" and r["split"] == "test"}
    assert acc["baseline"] > 0.9
    assert acc["filters-50-ft"] > 0.9 and acc["int8"] > 0.9 and acc["kd-student"] > 0.9
    # the report shows the shift tables and the class-delta heatmap (issue 5)
    html = (out / "report.html").read_text()
    assert "Domain shift: source validation and target-domain accuracy" in html
    assert "digits → thick" in html and "Common corruptions" in html
    assert 'alt="Per-class accuracy change against the baseline"' in html
    assert "compression-identified exemplars" in html

    # pruned, ablated, distilled and int8 variants all get saliency maps, their metrics and a t-SNE (issue 6)
    def metric(variant: str, name: str, **params: object) -> list[float]:
        return [
            r["value"]
            for r in rows
            if r["variant"] == variant
            and r["metric"] == name
            and all(r.get(k) == v for k, v in params.items())
        ]

    for v in ("global-l1-50", "filters-50-ft", "ablated-1", "kd-student", "int8"):
        assert metric(v, "adcc", method="gradcam") and metric(v, "saliency_mad", method="gradcam"), v
        assert metric(v, "silhouette", layer="penultimate", inputs="clean"), v
    assert [
        r["value"]
        for r in rows
        if r["variant"] == "int8" and r["probe"] == "explain" and r["metric"] == "surrogate"
    ] == [1.0]
    assert metric("kd-student", "adcc", method="cam")  # the student has a GAP + linear head
    assert "Saliency maps: gradcam (samples × variants, the input first)" in html
    assert 'alt="t-SNE of layer penultimate"' in html
    # the ONNX Runtime int8 file: as accurate, agreeing with its float source, a quarter of the size,
    # timed in ONNX Runtime, and given the masking verdict like the torch int8 variant
    assert acc["onnx-int8"] > 0.9
    assert metric("onnx-int8", "surrogate_agreement", split="test")[0] >= 0.98
    size = {v: metric(v, "file_bytes")[0] for v in ("baseline", "onnx-int8")}
    assert size["onnx-int8"] < size["baseline"] / 3
    runtimes = [r["runtime"] for r in rows if r["variant"] == "onnx-int8" and r["metric"] == "latency"]
    assert len(runtimes) == 2 and all(r.startswith("onnxruntime ") for r in runtimes), runtimes
    assert metric("onnx-int8", "gradient_masking") and metric("onnx-int8", "robust_accuracy", route="bpda")
    assert "runs in onnxruntime " in html and "surrogate: the float model it was exported from" in html
    second = run_experiment(exp, out)
    assert second.new == 0 and second.trained == []


@pytest.mark.slow
def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    """`make demo` in a fresh clone of this repository (creates its own .venv: minutes)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists() or shutil.which("make") is None:
        pytest.skip("needs a git checkout and make")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    proc = subprocess.run(["make", "demo"], cwd=clone, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (clone / "runs/demo/report.html").is_file()
