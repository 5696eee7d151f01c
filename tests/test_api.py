"""The notebook API: compaudit.audit() on an in-memory model and data set."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import compaudit
from compaudit import DATASETS, MODELS, ArrayDataset, ConfigError, DataBundle
from compaudit.export import export_frame

PROBES = ["accuracy", {"name": "efficiency", "params": {"batch_sizes": [1], "repeats": 3, "warmup": 1}}]
VARIANTS: dict[str, Any] = {
    "int8": "quantize_int8",
    "filters-50": {"method": "prune_filters", "params": {"ratio": 0.5}},
}


def test_audit_of_an_in_memory_model_gives_a_table_a_report_and_leaves_the_model_alone(
    trained_cnn: torch.nn.Module, digits16: DataBundle, tmp_path: Path
) -> None:
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    trained_cnn.train()  # the caller's mode must survive too
    result = compaudit.audit(trained_cnn, digits16, variants=VARIANTS, probes=PROBES, out=tmp_path / "a")

    # the caller's model: same weights, same mode, no hooks
    assert trained_cnn.training
    assert all(torch.equal(v, before[k]) for k, v in trained_cnn.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in trained_cnn.modules())
    # the temporary plugins are gone again
    assert not any(n.startswith("memory") for n in MODELS.names() + DATASETS.names())

    table = result.table()
    assert list(table.index) == ["baseline", "int8", "filters-50"]
    records = export_frame(result.out)
    acc = records[(records.metric == "accuracy") & (records.split == "test")].set_index("variant")["value"]
    for v in table.index:
        assert table.loc[v, "Test accuracy"] == pytest.approx(acc[v])
    # the baseline is the caller's model as it is: its accuracy is the one we measure directly
    with torch.no_grad():
        trained_cnn.eval()
        x, y = digits16.test.x, digits16.test.y  # type: ignore[attr-defined]
        direct = (trained_cnn(x).argmax(1) == y).float().mean().item()
    assert table.loc["baseline", "Test accuracy"] == pytest.approx(direct)
    # compression shows in the table: int8 shrinks the file, filter pruning the MACs
    assert table.loc["int8", "File size"] < 0.5 * table.loc["baseline", "File size"]
    assert table.loc["filters-50", "MACs"] < 0.6 * table.loc["baseline", "MACs"]

    page = result.report(tmp_path / "copy.html")
    html = page.read_text()
    assert page.is_file() and "compaudit report: audit" in html and 'id="overview"' in html
    assert (result.out / "report.html").is_file()
    # the weights are kept with the run and named in the stored experiment file
    kept = list((result.out / "inputs").glob("*.pt"))
    assert len(kept) == 1 and str(kept[0]) in html
    assert "int8" in result._repr_html_()

    # a rerun with the same model and data is served from the store; other weights are not
    again = compaudit.audit(trained_cnn, digits16, variants=VARIANTS, probes=PROBES, out=tmp_path / "a")
    assert again.summary.new == 0 and again.summary.cached == 6
    with torch.no_grad():
        next(trained_cnn.parameters()).mul_(0.5)
    changed = compaudit.audit(trained_cnn, digits16, variants=VARIANTS, probes=PROBES, out=tmp_path / "a")
    assert changed.summary.new == 6


def test_audit_trains_a_built_in_model_on_a_named_data_set(tmp_path: Path) -> None:
    result = compaudit.audit(
        "student_cnn",
        "digits",
        data_params={"size": 16},
        model_params={"width": 0.5},
        train={"epochs": 2, "lr": 0.05},
        variants=["quantize_int8"],
        probes=["accuracy"],
        out=tmp_path / "b",
        seed=3,
    )
    table = result.table()
    assert list(table.index) == ["baseline", "quantize_int8"]
    assert table.loc["baseline", "Test accuracy"] > 0.5
    assert result.summary.trained == ["baseline"]
    assert isinstance(result.warnings, list)
    assert set(result.records()["variant"]) == {"baseline", "quantize_int8"}


def test_audit_with_a_bundle_without_validation_split_carves_one(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    bundle = DataBundle("blobs", ArrayDataset(x[:150], y[:150]), ArrayDataset(x[:0], y[:0]),
                        ArrayDataset(x[150:], y[150:]), ("dark", "light"), (1, 8, 8))  # fmt: skip
    result = compaudit.audit(
        "student_cnn",
        bundle,
        model_params={"width": 0.25},
        train={"epochs": 1},
        variants=["quantize_int8"],
        probes=["accuracy"],
        out=tmp_path / "c",
    )
    records = result.records()
    assert not math.isnan(records[records.metric == "accuracy"]["value"].iloc[0])
    assert "memory-" in (result.out / "report.html").read_text()  # the digest names the data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variants": [42]}, "audit: variants[0]"),
        ({"variants": ["no_such_method"]}, "unknown method 'no_such_method'"),
        ({"variants": ["quantize_int8"], "probes": ["nope"]}, "unknown probe 'nope'"),
        ({"variants": ["quantize_int8"], "train": {"epochs": 1}}, "train is for a built-in model name"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(
    trained_cnn: torch.nn.Module, digits16: DataBundle, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        compaudit.audit(trained_cnn, digits16, out=tmp_path / "bad", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad").exists()
    assert not any(n.startswith("memory") for n in MODELS.names() + DATASETS.names())


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path: Path) -> None:
    """examples/python_api.py is the README's example: it must run as it is."""
    import runpy
    import sys

    script = Path(__file__).parents[1] / "examples" / "python_api.py"
    argv = sys.argv
    sys.argv = [str(script), str(tmp_path / "run")]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    assert (tmp_path / "run" / "report.html").is_file()
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    body = script.read_text().split('out = sys.argv[1] if len(sys.argv) > 1 else "runs/python-api"\n\n')[1]
    assert body.replace("out=out", 'out="runs/python-api"') in readme  # the README shows this very code
