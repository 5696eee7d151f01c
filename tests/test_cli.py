"""The command line: bad inputs get one line, exit code 2, and leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from compaudit import build_model
from compaudit.store import Store
from tests.conftest import assert_one_line_error, run_cli, tiny_config, write_yaml


def _save_ckpt(path: Path, name: str, params: dict[str, Any], shape: tuple[int, int, int]) -> Path:
    torch.save(build_model(name, input_shape=shape, num_classes=10, params=params).state_dict(), path)
    return path


BAD_CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "unknown data set": ({"data": {"name": "imagenet42"}}, ("data.name", "imagenet42", "digits")),
    "unknown model": ({"model": {"name": "vgg7"}}, ("model.name", "vgg7", "vgg6")),
    "adapter without its library": (
        {"model": {"name": "timm:resnet18"}},  # timm does not import here (it needs torchvision)
        ("model.name", "needs timm", "compaudit[timm]"),
    ),
    "wrong type": ({"seed": "zero"}, ("seed", "integer")),
    "wrong nested type": ({"model": {"name": "vgg6", "train": {"epochs": "many"}}}, ("model.train.epochs",)),
    "unknown field": ({"probess": []}, ("probess", "unknown field")),
    "bad method param": (
        {"variants": [{"name": "p", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 2}}]}]},
        ("variants[0].steps[0].params.sparsity",),
    ),
    "missing data folder": (
        {"data": {"name": "cifar10", "root": "no/such/folder"}},
        ("no/such/folder", "cifar-10-batches-py"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_experiment_is_one_line_exit_2_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, needles = BAD_CASES[case]
    exp = write_yaml(tmp_path / "exp.yaml", tiny_config(**overrides))
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, *needles)
    assert not out.exists()


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: tiny\ndata: {name: digits\nmodel: vgg6\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "malformed YAML", "exp.yaml", "line")
    assert not out.exists()


def test_missing_experiment_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert_one_line_error(err, "nope.yaml", "does not exist")


def test_checkpoint_of_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _save_ckpt(tmp_path / "lenet.pt", "lenet5", {}, (1, 16, 16))
    cfg = tiny_config()
    cfg["model"] = {"name": "student_cnn", "params": {"width": 0.5}, "checkpoint": str(ckpt)}
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(write_yaml(tmp_path / "exp.yaml", cfg)), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "lenet.pt", "does not fit", "features.0.0.weight")
    assert not out.exists()


def test_nonexistent_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config()
    cfg["model"] = {"name": "student_cnn", "checkpoint": "weights/missing.pt"}
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(write_yaml(tmp_path / "exp.yaml", cfg)), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "missing.pt", "does not exist")
    assert not out.exists()


def test_checkpoint_given_is_used_without_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = {"width": 0.5}
    _save_ckpt(tmp_path / "student.pt", "student_cnn", params, (1, 16, 16))
    cfg = tiny_config(variants=[], probes=[{"name": "accuracy", "params": {"splits": ["test"]}}])
    cfg["model"] = {
        "name": "student_cnn",
        "params": params,
        "checkpoint": "student.pt",
    }  # relative to the file
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(write_yaml(tmp_path / "exp.yaml", cfg)), "--out", str(out)], capsys)
    assert code == 0, err
    assert "training" not in err
    assert (out / "report.html").is_file()


def test_a_checkpoint_for_other_classes_gets_a_new_head_and_is_fine_tuned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pretrained weights whose classifier has another class count (ImageNet's 1000, here 4): the
    backbone is loaded, the head replaced and the baseline fine-tuned with model.train, and the
    lineage says so. Before head replacement this was the one-line 'does not fit' error."""
    params = {"width": 0.5}
    torch.manual_seed(0)
    source = build_model("student_cnn", input_shape=(1, 16, 16), num_classes=4, params=params)
    torch.save(source.state_dict(), tmp_path / "four.pt")
    cfg = tiny_config(variants=[], probes=[{"name": "accuracy", "params": {"splits": ["test"]}}])
    cfg["model"] = {"name": "student_cnn", "params": params, "checkpoint": "four.pt", "train": {"epochs": 1}}
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(write_yaml(tmp_path / "exp.yaml", cfg)), "--out", str(out)], capsys)
    assert code == 0, err
    assert "fine-tuning student_cnn" in err
    with Store(out) as store:
        (row,) = store.meta("plan")
        info = store.variant_info(row["variant_key"]) or {}
    assert info["pretrained"]["head"] == "fc"
    assert (info["pretrained"]["checkpoint_classes"], info["pretrained"]["classes"]) == (4, 10)
    assert len(info["train"]) == 1
    html = (out / "report.html").read_text()
    assert "head fc replaced (4 → 10 classes); fine-tuned 1 epochs" in html

    cfg["model"]["train"] = {"epochs": 0}
    exp0 = write_yaml(tmp_path / "exp0.yaml", cfg)
    code, _, err = run_cli(["run", str(exp0), "--out", str(tmp_path / "o0")], capsys)
    assert code == 2
    assert_one_line_error(err, "model.train.epochs", "head fc replaced")
    assert not (tmp_path / "o0").exists()


def test_check_prints_plan_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = write_yaml(tmp_path / "exp.yaml", tiny_config())
    code, out, _ = run_cli(["check", str(exp)], capsys)
    assert code == 0
    assert "3 variant(s) x 2 probe(s)" in out
    assert "pruned80-ft" in out and "prune_unstructured" in out
    assert list(tmp_path.iterdir()) == [exp]


def test_output_folder_that_is_not_a_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    exp = write_yaml(tmp_path / "exp.yaml", tiny_config())
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_report_and_export_of_a_non_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["report", str(tmp_path)], ["export", str(tmp_path)]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2
        assert_one_line_error(err, "not a compaudit run folder")


def test_plugins_lists_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from compaudit import DATASETS, METHODS, MODELS, PROBES

    code, out, _ = run_cli(["plugins"], capsys)
    assert code == 0
    for reg in (DATASETS, MODELS, METHODS, PROBES):
        for name in reg.names():
            assert f"  {name} " in out


def test_console_script_exit_code(tmp_path: Path) -> None:
    """The installed entry point itself (not just main()) exits 2 with one line on stderr."""
    exp = tmp_path / "exp.yaml"
    exp.write_text("seed: [1, 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "compaudit", "run", str(exp)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "malformed YAML")


def test_log_lines_follow_sys_stderr_even_after_it_was_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's log handler must not keep the stream of the moment it was set up: a notebook or a
    test harness that swaps and closes sys.stderr would otherwise get 'I/O operation on closed file'."""
    import io
    import logging

    from compaudit.cli import _setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    _setup_logging(quiet=False)
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("compaudit").info("still here")
    assert "compaudit: still here" in second.getvalue()
