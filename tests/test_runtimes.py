"""Deployment targets: ONNX Runtime and OpenVINO, fp32 and int8, as compression steps.

Every runtime model here is built through the methods' own code path (``METHODS.get(name)
.from_spec(...).deploy(model, ctx)``, or a run), never by calling a runtime directly: parity of the
fp32 targets with PyTorch, int8 agreement with the float model, what a run's accuracy and
efficiency probes report for them, the runtime model's properties (file size and zero weights as
the file stores them, pickling, threads, no gradient path, determinism), and the validation of
chains and of a missing OpenVINO extra.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit import Experiment, build_model, load_dataset, run_experiment
from compaudit.compress import METHODS, CompressContext
from compaudit.compress.base import make_permanent
from compaudit.compress.runtime import RuntimeModel
from compaudit.data import DataBundle
from compaudit.errors import ConfigError
from compaudit.export import export_rows
from compaudit.inference import predict
from compaudit.run import make_plan, validate
from compaudit.runtime import derive_seed
from tests.conftest import assert_one_line_error, run_cli, tiny_cnn, tiny_config, write_yaml

#: the int8 targets calibrate on 4 training batches here (32 by default): enough for digits
FAST_INT8 = {"calibration_batches": 4}
FP32 = ("onnx", "openvino")
INT8 = ("onnx_int8", "openvino_int8")


def context(data: DataBundle, seed: int = 0) -> CompressContext:
    return CompressContext(data=data, seed=seed, device=torch.device("cpu"))


def deploy(name: str, model: nn.Module, data: DataBundle, *, seed: int = 0, **params: Any) -> RuntimeModel:
    """The runtime model of method ``name`` built from ``model`` as a run builds it."""
    method = METHODS.get(name).from_spec(name, {**(FAST_INT8 if name in INT8 else {}), **params})
    ctx = context(data, seed)
    step = method.apply(model, ctx).eval()
    deployment = method.deploy(step, ctx)
    assert deployment is not None and not deployment.gradient_path
    built = deployment.model
    assert isinstance(built, RuntimeModel)
    assert deployment.runtime == built.describe()
    return built


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def conv_linear_zeros(model: nn.Module) -> tuple[int, int]:
    """(zero, total) weights of the conv and linear layers of a torch model."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros, total


@pytest.fixture(scope="module")
def deployed(trained_state: dict[str, torch.Tensor], digits16: DataBundle) -> Callable[[str], RuntimeModel]:
    """The trained tiny CNN deployed by each target, built once per module on first use."""
    built: dict[str, RuntimeModel] = {}

    def get(name: str) -> RuntimeModel:
        if name not in built:
            model = tiny_cnn(0)
            model.load_state_dict(trained_state)
            built[name] = deploy(name, model.eval(), digits16)
        return built[name]

    return get


# ---------------------------------------------------------------- fp32 parity with PyTorch


def assert_parity(model: nn.Module, runtime: nn.Module, x: torch.Tensor) -> None:
    for batch in (x[:1], x):
        ref, got = logits(model, batch), logits(runtime, batch)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert torch.isfinite(got).all()
        diff = float((got - ref).abs().max())
        assert diff <= 1e-4, diff
    # the logits spread well beyond the tolerance, so the comparison can fail
    assert float(logits(model, x).std()) > 1e-2


@pytest.mark.parametrize("target", FP32)
def test_fp32_targets_compute_the_trained_models_logits(
    target: str, trained_cnn: nn.Module, deployed: Callable[[str], RuntimeModel], digits16: DataBundle
) -> None:
    runtime = deployed(target)
    assert runtime.precision == "fp32"
    assert runtime.describe().startswith({"onnx": "onnxruntime ", "openvino": "openvino "}[target])
    x = digits16.test.x  # type: ignore[attr-defined]
    assert_parity(trained_cnn, runtime, x)  # batch 1 and the 359 test images at once
    # a batch size the export never saw (the batch axis is dynamic)
    assert_parity(trained_cnn, runtime, x[:7])


DIGITS_MODELS = ("vgg6", "cnn8", "lenet5", "student_cnn", "mobile_cnn")


@pytest.mark.slow
@pytest.mark.parametrize("target", FP32)
@pytest.mark.parametrize("arch", [*DIGITS_MODELS, "resnet18"])
def test_fp32_parity_on_the_built_in_models(arch: str, target: str) -> None:
    """Every small built-in model on digits (16x16 grey) and a CIFAR-style ResNet-18 (3x32x32, 10
    classes), freshly initialised: the runtime's logits are PyTorch's to 1e-4."""
    torch.set_num_threads(2)
    params = {"size": 32, "channels": 3} if arch == "resnet18" else {"size": 16}
    data = load_dataset("digits", params=params)
    torch.manual_seed(0)
    model = build_model(arch, input_shape=data.input_shape, num_classes=data.num_classes, params={}).eval()
    runtime = deploy(target, model, data)
    assert_parity(model, runtime, data.test.x[:64])  # type: ignore[attr-defined]


# ---------------------------------------------------------------- int8 targets


def agreement(a: nn.Module, b: nn.Module, data: DataBundle) -> float:
    return float((predict(a, data.test).predicted == predict(b, data.test).predicted).double().mean())


@pytest.mark.parametrize("target", INT8)
def test_int8_targets_agree_with_the_float_model(
    target: str, trained_cnn: nn.Module, deployed: Callable[[str], RuntimeModel], digits16: DataBundle
) -> None:
    runtime = deployed(target)
    assert runtime.precision == "int8"
    assert agreement(trained_cnn, runtime, digits16) >= 0.98
    # it is not the float model: int8 rounding moves the logits
    x = digits16.test.x[:64]  # type: ignore[attr-defined]
    assert float((logits(runtime, x) - logits(trained_cnn, x)).abs().max()) > 1e-4
    # and it stores int8 weights: the file with the weights is far smaller than the fp32 one
    fp32 = deployed(target.removesuffix("_int8"))
    weights = "model.onnx" if target == "onnx_int8" else "model.bin"
    assert len(runtime.files[weights]) < 0.65 * len(fp32.files[weights])


def int8_config(checkpoint: Path) -> dict[str, Any]:
    """The trained tiny CNN (as a checkpoint: nothing trains) and its two int8 deployments."""
    cfg = tiny_config(
        variants=[
            {"name": "ort-int8", "steps": [{"method": "onnx_int8", "params": FAST_INT8}]},
            {"name": "ov-int8", "steps": [{"method": "openvino_int8", "params": FAST_INT8}]},
        ],
        probes=[
            {"name": "accuracy", "params": {"splits": ["test"]}},
            {"name": "efficiency", "params": {"batch_sizes": [1], "repeats": 1, "warmup": 0}},
        ],
    )
    cfg["model"] = {**cfg["model"], "params": {"width": 0.5}, "checkpoint": str(checkpoint)}
    return cfg


@pytest.fixture(scope="module")
def int8_run(
    tmp_path_factory: pytest.TempPathFactory, trained_state: dict[str, torch.Tensor]
) -> tuple[Experiment, Path]:
    folder = tmp_path_factory.mktemp("int8-run")
    torch.save(trained_state, folder / "tiny.pt")
    exp = Experiment.from_dict(int8_config(folder / "tiny.pt"))
    out = folder / "run"
    summary = run_experiment(exp, out)
    assert not summary.failed and summary.trained == []
    return exp, out


def rows_of(out: Path, variant: str, probe: str) -> dict[tuple[str, str], dict[str, Any]]:
    rows = [r for r in export_rows(out) if r["variant"] == variant and r["probe"] == probe]
    return {(r["metric"], str(r.get("split") or r.get("batch_size") or "")): r for r in rows}


@pytest.mark.parametrize(("variant", "target"), [("ort-int8", "onnx_int8"), ("ov-int8", "openvino_int8")])
def test_a_runs_probes_report_the_int8_target_as_measured(
    variant: str,
    target: str,
    int8_run: tuple[Experiment, Path],
    trained_cnn: nn.Module,
    digits16: DataBundle,
) -> None:
    exp, out = int8_run
    (vp,) = [v for v in make_plan(exp).variants if v.name == variant]
    # the run's step: the same method, seed and float model, built directly here
    runtime = deploy(target, trained_cnn, digits16, seed=derive_seed(exp.seed, vp.step_keys[-1]))
    pred = predict(runtime, digits16.test)
    source = predict(trained_cnn, digits16.test)
    accuracy = rows_of(out, variant, "accuracy")
    assert accuracy[("accuracy", "test")]["value"] == pred.accuracy
    same = float((pred.predicted == source.predicted).double().mean())
    assert accuracy[("surrogate_agreement", "test")]["value"] == same
    assert same >= 0.98
    efficiency = rows_of(out, variant, "efficiency")
    assert efficiency[("file_bytes", "")]["value"] == runtime.file_bytes()
    zeros, total = runtime.weight_zeros()
    assert efficiency[("sparsity", "")]["value"] == pytest.approx(zeros / total)
    latency = efficiency[("latency", "1")]
    assert latency["runtime"] == runtime.describe() and latency["model"] == "deployed"
    # the baseline has no float source besides itself: no surrogate agreement
    assert ("surrogate_agreement", "test") not in rows_of(out, "baseline", "accuracy")


def test_the_same_int8_experiment_run_twice_gives_the_same_numbers(
    int8_run: tuple[Experiment, Path], tmp_path: Path
) -> None:
    exp, out = int8_run
    again = tmp_path / "again"
    assert not run_experiment(exp, again).failed

    def measured(folder: Path) -> dict[str, str]:
        rows = [r for r in export_rows(folder) if not r["noisy"]]  # latencies are timed: noisy
        return {
            json.dumps({k: v for k, v in r.items() if k != "value"}, sort_keys=True): repr(r["value"])
            for r in rows
        }

    first, second = measured(out), measured(again)
    assert {"ort-int8", "ov-int8"} <= {json.loads(k)["variant"] for k in first}
    assert first == second  # file sizes of the IR included: its made-up node names are numbered alike


@pytest.mark.parametrize("target", INT8)
def test_int8_targets_are_rebuilt_identically(
    target: str, trained_cnn: nn.Module, deployed: Callable[[str], RuntimeModel], digits16: DataBundle
) -> None:
    """Calibration and quantization are deterministic: the same step gives the same file."""
    again = deploy(target, trained_cnn, digits16)
    assert again.files == deployed(target).files
    x = digits16.test.x[:32]  # type: ignore[attr-defined]
    assert torch.equal(logits(again, x), logits(deployed(target), x))


# ---------------------------------------------------------------- properties of a runtime model


@pytest.mark.parametrize("target", FP32)
def test_weight_zeros_count_the_pruned_zeros_the_file_stores(
    target: str, trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    prune = METHODS.get("prune_unstructured").from_spec("prune_unstructured", {"sparsity": 0.5})
    pruned = make_permanent(prune.apply(trained_cnn, context(digits16))).eval()
    zeros, total = conv_linear_zeros(pruned)
    assert zeros >= 0.49 * total
    runtime = deploy(target, pruned, digits16)
    assert runtime.weight_zeros() == (zeros, total)
    assert conv_linear_zeros(trained_cnn)[0] < zeros  # the unpruned model has (almost) none


@pytest.mark.parametrize("target", [*FP32, *INT8])
def test_file_bytes_are_the_bytes_written(
    target: str, deployed: Callable[[str], RuntimeModel], tmp_path: Path
) -> None:
    runtime = deployed(target)
    paths = runtime.write(tmp_path / "shipped")
    assert [p.name for p in paths] == (
        ["model.onnx"] if target.startswith("onnx") else ["model.xml", "model.bin"]
    )
    assert runtime.file_bytes() == sum(p.stat().st_size for p in paths)


@pytest.mark.parametrize("target", [*FP32, *INT8])
def test_pickling_keeps_the_files_and_reopens_a_session(
    target: str, deployed: Callable[[str], RuntimeModel], digits16: DataBundle
) -> None:
    runtime = deployed(target)
    x = digits16.test.x[:16]  # type: ignore[attr-defined]
    before = logits(runtime, x)  # a session is open now: pickling must drop it
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy.files == runtime.files and copy.batch == runtime.batch
    assert torch.equal(logits(copy, x), before)


@pytest.mark.parametrize("target", [*FP32, *INT8])
def test_each_thread_count_has_its_own_session_and_the_same_outputs(
    target: str, deployed: Callable[[str], RuntimeModel], digits16: DataBundle
) -> None:
    runtime = deployed(target)
    x = digits16.test.x[:64]  # type: ignore[attr-defined]
    try:
        torch.set_num_threads(1)
        one, session_one = logits(runtime, x), runtime.session()
        torch.set_num_threads(2)
        two, session_two = logits(runtime, x), runtime.session()
        assert runtime.session() is session_two  # opened once per thread count
    finally:
        torch.set_num_threads(2)
    assert session_one is not session_two
    assert float((one - two).abs().max()) <= 1e-5


@pytest.mark.parametrize("target", [*FP32, *INT8])
def test_no_gradient_reaches_the_input(
    target: str, deployed: Callable[[str], RuntimeModel], digits16: DataBundle
) -> None:
    runtime = deployed(target)
    assert list(runtime.parameters()) == []
    x = digits16.test.x[:4].clone().requires_grad_()  # type: ignore[attr-defined]
    out = runtime(x)
    assert out.grad_fn is None and not out.requires_grad
    with pytest.raises(RuntimeError):
        out.sum().backward()
    assert x.grad is None


# ---------------------------------------------------------------- validation


def variant(*steps: str | dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "v", "steps": [{"method": s} if isinstance(s, str) else s for s in steps], **extra}


@pytest.mark.parametrize(
    ("steps", "needles"),
    [
        (("quantize_int8", "onnx"), ("variants[0].steps[1]", "no step may follow 'quantize_int8'")),
        (("quantize_int8", "openvino_int8"), ("variants[0].steps[1]", "no step may follow 'quantize_int8'")),
        (("onnx", "prune_unstructured"), ("variants[0].steps[1]", "no step may follow 'onnx'")),
        (("onnx_int8", "onnx"), ("variants[0].steps[1]", "no step may follow 'onnx_int8'")),
    ],
)
def test_no_step_may_follow_a_deployed_step(
    steps: tuple[str, ...], needles: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_yaml(tmp_path / "exp.yaml", tiny_config(variants=[variant(*steps)]))
    out = tmp_path / "out"
    for args in (["check", str(exp)], ["run", str(exp), "--out", str(out)]):
        code, _, err = run_cli(args, capsys)
        assert code == 2
        assert_one_line_error(err, *needles)
    assert not out.exists()


def test_a_deployment_target_may_end_a_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other side of the rule: pruning, fine-tuning, then a runtime is a valid chain."""
    prune = {"method": "prune_unstructured", "params": {"sparsity": 0.5}}
    chain = variant(prune, "onnx_int8", finetune={"epochs": 1})
    exp = write_yaml(tmp_path / "exp.yaml", tiny_config(variants=[chain]))
    code, out, err = run_cli(["check", str(exp)], capsys)
    assert code == 0, err
    assert "prune_unstructured -> onnx_int8" in out


@pytest.fixture
def without_openvino(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """OpenVINO and NNCF not importable (as if the extra were not installed)."""
    for module in ("openvino", "nncf"):
        monkeypatch.setitem(sys.modules, module, None)
    yield


@pytest.mark.parametrize(("target", "package"), [("openvino_int8", "openvino"), ("openvino", "openvino")])
def test_openvino_targets_without_the_extra_are_refused_at_validation(
    target: str, package: str, without_openvino: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(variants=[variant(target)])
    with pytest.raises(ConfigError) as exc:
        validate(Experiment.from_dict(cfg), source="exp.yaml")
    assert "\n" not in str(exc.value)
    assert "variants[0].steps[0].method" in str(exc.value)
    assert f"optional package {package!r}" in str(exc.value)
    exp = write_yaml(tmp_path / "exp.yaml", cfg)
    out = tmp_path / "out"
    for args in (["check", str(exp)], ["run", str(exp), "--out", str(out)]):
        code, _, err = run_cli(args, capsys)
        assert code == 2
        assert_one_line_error(err, target, "pip install 'compaudit[openvino]'")
    assert not out.exists()


def test_nncf_alone_missing_refuses_openvino_int8_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    validate(Experiment.from_dict(tiny_config(variants=[variant("openvino")])))  # needs no NNCF
    with pytest.raises(ConfigError, match=r"optional package 'nncf': pip install 'compaudit\[openvino\]'"):
        validate(Experiment.from_dict(tiny_config(variants=[variant("openvino_int8")])))


def test_onnx_runtime_threads_spin_only_while_the_efficiency_probe_times_latency(
    deployed: Callable[[str], RuntimeModel],
    digits16: DataBundle,
    tmp_path: Path,
    trained_state: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from compaudit.compress.onnx import OrtModel

    # idle threads spinning between calls take the cores PyTorch needs when the two alternate
    # (BPDA); a deployment running only the runtime spins, and latency is timed that way
    runtime = deployed("onnx_int8")
    assert isinstance(runtime, OrtModel)
    entry = "session.intra_op.allow_spinning"
    assert runtime.session_options(2).get_session_config_entry(entry) == "0"
    assert runtime.session_options(2, spinning=True).get_session_config_entry(entry) == "1"
    x = digits16.test.x[:16]  # type: ignore[attr-defined]
    plain, session = logits(runtime, x), runtime.session()
    with runtime.timing():
        timed, spinning = logits(runtime, x), runtime.session()
    assert spinning is not session and runtime.session() is session
    assert torch.equal(plain, timed)
    # a run: only the efficiency probe's latency calls are made with spinning threads
    seen: list[tuple[str, bool]] = []
    forward = RuntimeModel.forward

    def recorded(self: RuntimeModel, x: torch.Tensor) -> torch.Tensor:
        seen.append((str(tuple(x.shape)), self._spinning))
        return forward(self, x)

    monkeypatch.setattr(RuntimeModel, "forward", recorded)
    torch.save(trained_state, tmp_path / "tiny.pt")
    cfg = int8_config(tmp_path / "tiny.pt")
    cfg["variants"] = cfg["variants"][:1]
    cfg["probes"][1]["params"]["batch_sizes"] = [1, 4]
    assert not run_experiment(Experiment.from_dict(cfg), tmp_path / "run").failed
    timed_calls = {shape for shape, spin in seen if spin}
    assert timed_calls == {str((1, 1, 16, 16)), str((4, 1, 16, 16))}  # the latency batches
    assert any(not spin for _, spin in seen)  # the accuracy probe's predictions
