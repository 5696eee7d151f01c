"""``deployed_file``: a user's own ONNX file (or OpenVINO IR) audited against the experiment's model.

The files here are written by the tests themselves with PyTorch's legacy TorchScript exporter
(``dynamo=False``), not by compaudit's own export, as a user's deployment pipeline would: one with
a dynamic batch axis and one with a fixed batch of 4 (fed in zero-padded chunks). The experiment's
model is the checkpoint the files were exported from, so the file's top-1 agreement with it is 1.
Bad files and chains are refused in one line, exit code 2, before anything runs.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit import Experiment
from compaudit.cli import main
from compaudit.compress import METHODS, CompressContext
from compaudit.compress.runtime import RuntimeModel
from compaudit.data import DataBundle
from compaudit.export import load_export
from compaudit.inference import predict
from compaudit.run import make_plan
from tests.conftest import assert_one_line_error, run_cli, tiny_cnn, tiny_config, write_yaml

ALL_PROBES = ("accuracy", "efficiency", "adversarial", "shift", "classes", "explain", "embedding")

#: every probe, on as few samples as still measures something
PROBES: list[dict[str, Any]] = [
    {"name": "accuracy"},
    {"name": "efficiency", "params": {"batch_sizes": [1, 8], "repeats": 2, "warmup": 1}},
    {
        "name": "adversarial",
        "params": {
            "samples": 16,
            "sanity_steps": 2,
            "convergence_factor": 2,
            "attacks": [
                {"attack": "fgsm", "eps": [0.05]},
                {"attack": "pgd", "eps": [0.05], "params": {"steps": 2}},
            ],
        },
    },
    {"name": "shift", "params": {"corruptions": ["gaussian_noise"], "severities": [1], "samples": 16}},
    {"name": "classes", "params": {"bootstrap": 20, "exemplars": 1}},
    {
        "name": "explain",
        "params": {"methods": ["gradcam"], "samples": 8, "grid": 1, "batch_size": 8, "bootstrap": 0},
    },
    {
        "name": "embedding",
        "params": {"layers": ["penultimate"], "samples": 16, "plot_points": 4, "bootstrap": 0},
    },
]


def export_legacy(model: nn.Module, path: Path, shape: tuple[int, ...], *, batch: int | None = None) -> Path:
    """``model`` written to ``path`` by PyTorch's TorchScript exporter, as a user would: a dynamic
    batch axis, or a fixed ``batch``."""
    x = torch.rand(batch or 2, *shape, generator=torch.Generator().manual_seed(0))
    dynamic = None if batch else {"input": {0: "n"}, "output": {0: "n"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated, which is the point
        torch.onnx.export(
            model.eval(),
            (x,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=dynamic,
        )
    return path


def experiment(
    checkpoint: str, variants: list[dict[str, Any]], probes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The tiny CNN loaded from ``checkpoint`` (nothing trains) and the given variants and probes."""
    cfg = tiny_config(variants=variants, probes=probes)
    cfg["model"] = {**cfg["model"], "params": {"width": 0.5}, "checkpoint": checkpoint}
    return cfg


def deployed_file(name: str, path: str | Path, **params: Any) -> dict[str, Any]:
    return {"name": name, "steps": [{"method": "deployed_file", "params": {"path": str(path), **params}}]}


# ---------------------------------------------------------------- end to end, through the CLI


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory, trained_state: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The trained tiny CNN's checkpoint and two ONNX files exported from it by the test (dynamic
    batch; batch fixed at 4), audited by every probe through ``compaudit run``, then exported with
    ``compaudit export``. Paths in the YAML are relative to it."""
    folder = tmp_path_factory.mktemp("deployed")
    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    torch.save(trained_state, folder / "tiny.pt")
    export_legacy(model, folder / "user.onnx", (1, 16, 16))
    export_legacy(model, folder / "user_b4.onnx", (1, 16, 16), batch=4)
    cfg = experiment(
        "tiny.pt",
        [deployed_file("user-onnx", "user.onnx"), deployed_file("user-onnx-b4", "user_b4.onnx")],
        PROBES,
    )
    exp = write_yaml(folder / "exp.yaml", cfg)
    out = folder / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("elsewhere"))  # relative paths are the YAML's, not the cwd's
        with pytest.raises(SystemExit) as exc:
            main(["run", str(exp), "--out", str(out)])
        assert exc.value.code in (0, None)
        with pytest.raises(SystemExit) as exc:
            main(["export", str(out), "--format", "csv", "--out", str(folder / "rows.csv")])
        assert exc.value.code in (0, None)
    rows = load_export(folder / "rows.csv").to_dict("records")
    return {"folder": folder, "out": out, "rows": rows, "model": model.eval()}


def rows_of(audited: dict[str, Any], variant: str, probe: str | None = None) -> list[dict[str, Any]]:
    return [r for r in audited["rows"] if r["variant"] == variant and (probe is None or r["probe"] == probe)]


def value(audited: dict[str, Any], variant: str, probe: str, metric: str, **params: Any) -> float:
    found = [
        r["value"]
        for r in rows_of(audited, variant, probe)
        if r["metric"] == metric and all(r.get(k) == v for k, v in params.items())
    ]
    assert len(found) == 1, (variant, probe, metric, params, found)
    return float(found[0])


def test_every_probe_audits_the_file_and_export_has_its_rows(audited: dict[str, Any]) -> None:
    for name in ("user-onnx", "user-onnx-b4"):
        probes = {r["probe"] for r in rows_of(audited, name)}
        assert probes == set(ALL_PROBES), probes
        assert all(
            not (isinstance(r["value"], float) and math.isnan(r["value"]))
            for r in rows_of(audited, name, "accuracy")
        )
    html = (audited["out"] / "report.html").read_text()
    assert "user-onnx" in html and "user-onnx-b4" in html and "deployed_file" in html


def test_the_file_is_what_is_measured_and_agrees_with_its_checkpoint(
    audited: dict[str, Any], digits16: DataBundle
) -> None:
    source = predict(audited["model"], digits16.test)
    for name in ("user-onnx", "user-onnx-b4"):
        assert value(audited, name, "accuracy", "surrogate_agreement", split="test") == 1.0
        assert value(audited, name, "accuracy", "surrogate_agreement", split="val") == 1.0
        assert value(audited, name, "accuracy", "accuracy", split="test") == source.accuracy
    # the file runs in ONNX Runtime, as its latency rows say
    latency = [r for r in rows_of(audited, "user-onnx", "efficiency") if r["metric"] == "latency"]
    assert {r["batch_size"] for r in latency} == {1, 8}
    assert all(r["runtime"].startswith("onnxruntime ") and r["model"] == "deployed" for r in latency)
    # its size is the file's, as on disk
    for name, file in (("user-onnx", "user.onnx"), ("user-onnx-b4", "user_b4.onnx")):
        size = (audited["folder"] / file).stat().st_size
        assert value(audited, name, "efficiency", "file_bytes") == size


def test_the_adversarial_probe_attacks_the_file_by_bpda_and_transfer(audited: dict[str, Any]) -> None:
    robust = [r for r in rows_of(audited, "user-onnx", "adversarial") if r["metric"] == "robust_accuracy"]
    routes = {r["route"] for r in robust if r["attack"] == "fgsm"}
    assert {"bpda", "transfer"} <= routes
    assert "white-box" not in routes  # no gradient reaches the input through a runtime
    # BPDA differentiates the checkpoint the file came from: its FGSM is the baseline's white-box one
    assert value(
        audited, "user-onnx", "adversarial", "robust_accuracy", attack="fgsm", route="bpda"
    ) == value(audited, "baseline", "adversarial", "robust_accuracy", attack="fgsm", route="white-box")


def test_a_fixed_batch_file_gives_the_dynamic_files_numbers(audited: dict[str, Any]) -> None:
    """A file with batch 4 is fed in chunks of 4 (the last zero-padded): every number that does not
    depend on the variant's own seed (PGD's random start, bootstrap draws) or on time is the same."""

    def comparable(name: str) -> dict[str, float]:
        out = {}
        for r in rows_of(audited, name):
            if r["noisy"] or r["metric"] == "file_bytes" or "_ci_" in r["metric"]:
                continue
            if r["probe"] == "adversarial" and r.get("attack") != "fgsm":
                continue  # PGD starts at random, seeded by the variant
            params = {k: v for k, v in r.items() if k not in ("variant", "variant_name", "value")}
            key = json.dumps(params, sort_keys=True, default=str)
            out[key] = r["value"]
        return out

    dynamic, fixed = comparable("user-onnx"), comparable("user-onnx-b4")
    assert dynamic.keys() == fixed.keys()
    assert len(dynamic) > 50
    for key, v in dynamic.items():
        assert fixed[key] == pytest.approx(v, abs=1e-6, nan_ok=True), key


def test_the_files_digest_is_part_of_the_variant_key(tmp_path: Path, trained_cnn: nn.Module) -> None:
    path = export_legacy(trained_cnn, tmp_path / "user.onnx", (1, 16, 16))
    cfg = experiment(str(tmp_path / "ck.pt"), [deployed_file("user", path)], [{"name": "accuracy"}])
    torch.save(trained_cnn.state_dict(), tmp_path / "ck.pt")

    def key() -> str:
        (vp,) = make_plan(Experiment.from_dict(cfg)).variants
        return vp.key

    first = key()
    assert key() == first
    moved = tmp_path / "elsewhere" / "user.onnx"  # the same file in another folder: the same variant
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    cfg["variants"][0]["steps"][0]["params"]["path"] = str(moved)
    assert key() == first
    with torch.no_grad():
        trained_cnn.fc.bias.add_(0.5)
    export_legacy(trained_cnn, moved, (1, 16, 16))  # the same path, rewritten
    assert key() != first


# ---------------------------------------------------------------- the method on its own


def context(data: DataBundle) -> CompressContext:
    return CompressContext(data=data, seed=0, device=torch.device("cpu"))


def load(path: Path, model: nn.Module, data: DataBundle) -> RuntimeModel:
    method = METHODS.get("deployed_file").from_spec("deployed_file", {"path": str(path)})
    assert method.check_inputs(data) is None
    deployment = method.deploy(method.apply(model, context(data)), context(data))
    assert deployment is not None and not deployment.gradient_path
    assert isinstance(deployment.model, RuntimeModel)
    return deployment.model


@pytest.mark.parametrize("batch", [None, 1, 4])
def test_a_users_onnx_file_computes_its_models_logits(
    batch: int | None, tmp_path: Path, trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    path = export_legacy(trained_cnn, tmp_path / "m.onnx", (1, 16, 16), batch=batch)
    runtime = load(path, trained_cnn, digits16)
    assert runtime.batch == batch
    assert runtime.file_bytes() == path.stat().st_size
    x = digits16.test.x[:11]  # type: ignore[attr-defined]  # 11: not a multiple of the fixed batches
    with torch.no_grad():
        assert float((runtime(x) - trained_cnn(x)).abs().max()) <= 1e-4
        assert runtime(x[:1]).shape == (1, 10)
        assert runtime(x[:0]).shape == (0, 10)  # as a torch model answers an empty batch


def test_a_users_openvino_ir_computes_its_models_logits(
    tmp_path: Path, trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    import openvino as ov

    onnx_path = export_legacy(trained_cnn, tmp_path / "m.onnx", (1, 16, 16))
    xml = tmp_path / "ir" / "model.xml"
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    runtime = load(xml, trained_cnn, digits16)
    assert runtime.describe().startswith("openvino ")
    assert runtime.file_bytes() == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    x = digits16.test.x[:16]  # type: ignore[attr-defined]
    with torch.no_grad():
        assert float((runtime(x) - trained_cnn(x)).abs().max()) <= 1e-4


# ---------------------------------------------------------------- bad files and chains: refused


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, trained_state: dict[str, torch.Tensor]) -> Path:
    """Files that do not fit 1x16x16 digits with 10 classes, and a checkpoint that does."""
    folder = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    export_legacy(nn.Sequential(nn.Flatten(), nn.Linear(256, 5)), folder / "five_classes.onnx", (1, 16, 16))
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    export_legacy(rgb, folder / "rgb.onnx", (3, 16, 16))
    export_legacy(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), folder / "size8.onnx", (1, 8, 8))
    export_legacy(nn.Sequential(nn.Flatten(), nn.Linear(256, 10)), folder / "good.onnx", (1, 16, 16))
    (folder / "weights.pt").write_bytes(b"not a model")
    (folder / "lonely.xml").write_text("<net/>")
    torch.save(trained_state, folder / "tiny.pt")
    return folder


#: (variants, words the one-line error must contain): refused when the experiment is validated
INVALID: dict[str, tuple[list[dict[str, Any]], tuple[str, ...]]] = {
    "missing path": (
        [deployed_file("v", "nope.onnx")],
        ("variants[0].steps[0].params.path", "nope.onnx", "does not exist"),
    ),
    "not .onnx": (
        [deployed_file("v", "weights.pt")],
        ("variants[0].steps[0].params.path", "weights.pt", "expected an .onnx file"),
    ),
    "xml without bin": ([deployed_file("v", "lonely.xml")], ("lonely.xml", "has no lonely.bin")),
    "another step first": (
        [
            {
                "name": "v",
                "steps": [
                    {"method": "prune_unstructured", "params": {"sparsity": 0.5}},
                    {"method": "deployed_file", "params": {"path": "good.onnx"}},
                ],
            }
        ],
        ("variants[0].steps[1]", "'deployed_file' must be its variant's only step"),
    ),
    "another step after": (
        [
            {
                "name": "v",
                "steps": [{"method": "deployed_file", "params": {"path": "good.onnx"}}, {"method": "onnx"}],
            }
        ],
        ("variants[0].steps[1]", "no step may follow 'deployed_file'"),
    ),
    "variant finetune": (
        [{**deployed_file("v", "good.onnx"), "finetune": {"epochs": 1}}],
        ("variants[0].steps[0]", "without fine-tuning"),
    ),
    "step finetune": (
        [
            {
                "name": "v",
                "steps": [
                    {"method": "deployed_file", "params": {"path": "good.onnx"}, "finetune": {"epochs": 1}}
                ],
            }
        ],
        ("variants[0].steps[0]", "without fine-tuning"),
    ),
}

#: (file, words of the one-line error): refused once the data set is loaded, before anything runs
UNFIT: dict[str, tuple[str, tuple[str, ...]]] = {
    "class count": ("five_classes.onnx", ("variants[0].steps[0].params.path", "5 outputs", "10 classes")),
    "input channels": (
        "rgb.onnx",
        ("variants[0].steps[0].params.path", "rgb.onnx", "does not take", "1x16x16"),
    ),
    "input size": (
        "size8.onnx",
        ("variants[0].steps[0].params.path", "size8.onnx", "does not take", "1x16x16"),
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_deployed_file_step_is_refused_by_check_and_run(
    case: str, bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variants, needles = INVALID[case]
    exp = write_yaml(
        bad_files / f"{case.replace(' ', '-')}.yaml", experiment("tiny.pt", variants, PROBES[:1])
    )
    out = tmp_path / "out"
    for args in (["check", str(exp)], ["run", str(exp), "--out", str(out)]):
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args[0], err)
        assert_one_line_error(err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(UNFIT))
def test_a_file_that_does_not_fit_the_data_is_refused_before_anything_runs(
    case: str, bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, needles = UNFIT[case]
    cfg = experiment("tiny.pt", [deployed_file("v", file)], PROBES)
    exp = write_yaml(bad_files / f"{case.replace(' ', '-')}.yaml", cfg)
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 2, err
    assert_one_line_error(err, *needles)  # one line: no log line of anything that ran before it
    assert not out.exists()


def test_a_good_file_passes_the_same_checks(
    bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of the refusals: a file that fits runs (here on the accuracy probe only)."""
    cfg = experiment(
        "tiny.pt", [deployed_file("v", "good.onnx")], [{"name": "accuracy", "params": {"splits": ["test"]}}]
    )
    exp = write_yaml(bad_files / "good.yaml", cfg)
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("case", sorted(UNFIT))
def test_check_refuses_a_file_that_does_not_fit_the_data(
    case: str, bad_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, needles = UNFIT[case]
    exp = write_yaml(
        bad_files / f"check-{case.replace(' ', '-')}.yaml",
        experiment("tiny.pt", [deployed_file("v", file)], PROBES[:1]),
    )
    code, _, err = run_cli(["check", str(exp)], capsys)
    assert code == 2, err
    assert_one_line_error(err, *needles)


def test_an_openvino_ir_without_openvino_is_one_line_naming_the_extra(
    tmp_path: Path,
    trained_cnn: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir = tmp_path / "model.xml"
    ir.write_text("<net/>")  # never read: OpenVINO is missing
    ir.with_suffix(".bin").write_bytes(b"")
    torch.save(trained_cnn.state_dict(), tmp_path / "tiny.pt")
    monkeypatch.setitem(sys.modules, "openvino", None)
    exp = write_yaml(
        tmp_path / "exp.yaml", experiment("tiny.pt", [deployed_file("v", "model.xml")], PROBES[:1])
    )
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(exp), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "model.xml", "needs openvino", "pip install 'compaudit[openvino]'")
    assert not out.exists()
