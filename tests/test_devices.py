"""Devices on a machine without a GPU: where each model computes, what results record, the
accuracy and classes probes' batch size. The CUDA paths themselves are in ``tests/test_cuda.py``."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit import Experiment, Store, run_experiment
from compaudit.compress import METHODS, CompressContext
from compaudit.compress.fakequant import ActivationQuantizer, WeightQuantizer, quantize_layers
from compaudit.data import DataBundle
from compaudit.errors import CompauditError
from compaudit.inference import device_name, execution_device, predict
from compaudit.probes import MEASURED_ON, PROBES, ProbeContext, ProbeResult
from compaudit.runtime import resolve_device
from compaudit.variant import Variant
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def probe_result(name: str, variant: Variant, ctx: ProbeContext, **params: Any) -> ProbeResult:
    return PROBES.get(name).from_spec(name, dict(params)).run(variant, ctx)


def numbers(res: ProbeResult) -> dict[tuple[str, str], float]:
    return {(m.name, repr(sorted(m.params.items()))): m.value for m in res.metrics}


class Calls:
    """A forward hook counting calls and recording the devices of the inputs."""

    def __init__(self) -> None:
        self.devices: list[str] = []

    def __call__(self, _module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        self.devices.append(args[0].device.type)


@pytest.fixture(scope="module")
def int8_variant(trained_state: dict[str, torch.Tensor], digits16: DataBundle) -> Variant:
    """The trained tiny CNN quantized to real int8 kernels, as the run builds it (no parent: it
    stands alone as a baseline, so probes compare it with nothing else)."""
    from tests.conftest import tiny_cnn

    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 2})
    ctx = CompressContext(data=digits16, seed=0, device=CPU)
    fake = method.apply(model.eval(), ctx).eval()
    deployment = method.deploy(fake, ctx)
    assert deployment is not None
    deployed = deployment.model
    return Variant(
        "int8",
        "int8-key",
        fake,
        deployed=deployed,
        surrogate=fake,
        bits=8.0,
        gradient_path=False,
        graph=deployed.quantized,
    )


# ---------------------------------------------------------------- where a model computes


def test_execution_device_follows_the_run_except_for_int8(
    trained_cnn: nn.Module, int8_variant: Variant
) -> None:
    assert execution_device(trained_cnn, "meta") == torch.device("meta")  # never moved or second-guessed
    assert execution_device(trained_cnn, CPU) == CPU
    assert int8_variant.deployed is not None
    assert execution_device(int8_variant.deployed, "cuda") == CPU  # int8 kernels are CPU kernels
    assert device_name("cpu") == "cpu"
    assert device_name(torch.device("meta")) == "meta"


def test_int8_predictions_run_on_the_cpu_whatever_the_run_device(
    int8_variant: Variant, digits16: DataBundle
) -> None:
    assert int8_variant.deployed is not None
    calls = Calls()
    handle = int8_variant.deployed.register_forward_hook(calls)
    # without its float surrogate, whose agreement with the int8 model the accuracy probe would
    # measure on the run's device (a float model, which "meta" cannot run)
    int8_only = dataclasses.replace(int8_variant, surrogate=None)
    try:
        # "meta" stands for a GPU here: a float model would fail on it, the int8 model never goes there
        ctx = ProbeContext(data=digits16, baseline=int8_only, device=torch.device("meta"), seed=0)
        res = probe_result("accuracy", int8_only, ctx, splits=["test"])
    finally:
        handle.remove()
    assert calls.devices and set(calls.devices) == {"cpu"}
    assert res.devices == {"outputs": "cpu"}
    on_cpu = ProbeContext(data=digits16, baseline=int8_only, device=CPU, seed=0)
    assert torch.equal(ctx.predictions(int8_only).logits, on_cpu.predictions(int8_only).logits)


def test_a_float_model_is_never_silently_run_on_the_cpu(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    # the data go where the run says; a model left elsewhere fails loudly instead of falling back
    with pytest.raises((RuntimeError, NotImplementedError)):
        predict(trained_cnn, digits16.test, device="meta")


def test_activation_quantizers_are_created_on_the_layers_device() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 10)).to("meta")
    quantize_layers(
        model, weight_quantizer=lambda: WeightQuantizer(4), act_bits=8, unsupported=lambda *_: None
    )
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    assert len(quantizers) == 2
    assert all(b.device.type == "meta" for q in quantizers for b in q.buffers())


def test_an_absent_cuda_index_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(CompauditError, match=r"cuda:3.*1 CUDA device"):
        resolve_device("cuda:3")


# ---------------------------------------------------------------- what results record


def test_every_probe_records_its_device(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base = Variant("baseline", "base-key", trained_cnn)
    ctx = ProbeContext(data=digits16, baseline=base, device=CPU, seed=0)
    runs: list[tuple[str, dict[str, Any]]] = [
        ("accuracy", {}),
        ("classes", {"bootstrap": 0, "exemplars": 0}),
        ("efficiency", {"batch_sizes": [1], "repeats": 1, "warmup": 0}),
    ]
    for name, params in runs:
        res = probe_result(name, base, ctx, **params)
        assert res.devices["outputs"] == "cpu", name
        assert all(set(r) == {"what", "device"} for r in res.tables[MEASURED_ON])
    assert res.devices == {"latency": "cpu", "outputs": "cpu"}


def test_the_int8_adversarial_routes_each_record_their_device(
    int8_variant: Variant, trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    child = copy.copy(int8_variant)
    child.parent = "base-key"
    ctx = ProbeContext(
        data=digits16, baseline=Variant("baseline", "base-key", trained_cnn), device=CPU, seed=0
    )
    attacks = [{"attack": "pgd", "eps": [0.1], "params": {"steps": 2}}]
    res = probe_result("adversarial", child, ctx, attacks=attacks, samples=16, sanity_steps=1)
    assert res.devices == {
        "outputs": "cpu",
        "attack (naive)": "cpu",
        "attack (bpda)": "cpu",
        "attack (transfer)": "cpu",
    }


# ---------------------------------------------------------------- batch sizes of accuracy and classes


@pytest.mark.parametrize("name", ["accuracy", "classes"])
def test_batch_size_changes_no_number(trained_cnn: nn.Module, digits16: DataBundle, name: str) -> None:
    base = Variant("baseline", "base-key", trained_cnn)
    child = Variant("copy", "copy-key", copy.deepcopy(trained_cnn), parent="base-key")
    params: dict[str, Any] = {"bootstrap": 20, "exemplars": 2} if name == "classes" else {}
    calls = Calls()
    child.model.register_forward_hook(calls)
    ctx = ProbeContext(data=digits16, baseline=base, device=CPU, seed=0)
    default = probe_result(name, child, ctx, **params)
    shared = len(calls.devices)
    small = probe_result(name, child, ctx, batch_size=7, **params)
    n_test, n_val = len(digits16.test), len(digits16.val)  # type: ignore[arg-type]
    # its own predictions, in batches of 7 (the shared ones of batch 256 are not reused)
    own = math.ceil(n_test / 7) + (math.ceil(n_val / 7) if name == "accuracy" else 0)
    assert len(calls.devices) - shared == own
    assert numbers(small) == pytest.approx(numbers(default), abs=1e-6, nan_ok=True)
    # without a batch size both probes share the context's predictions: nothing is predicted twice
    before = len(calls.devices)
    if name == "accuracy":
        probe_result("classes", child, ctx, bootstrap=0, exemplars=0)
        assert len(calls.devices) == before
    else:
        probe_result("accuracy", child, ctx)
        assert len(calls.devices) == before + math.ceil(n_val / 256)  # val only: test is shared


def test_an_unset_batch_size_leaves_the_result_key_as_it_was() -> None:
    for name in ("accuracy", "classes"):
        cls = PROBES.get(name)
        assert "batch_size" not in cls.from_spec(name, {}).describe()["params"]
        assert cls.from_spec(name, {"batch_size": 64}).describe()["params"]["batch_size"] == 64
        assert "batch size" in (cls.Params.model_fields["batch_size"].description or "")


# ---------------------------------------------------------------- end to end: stored, and in the report


def test_a_run_stores_and_reports_where_it_measured(tmp_path: Path) -> None:
    cfg = tiny_config(
        model={"name": "student_cnn", "train": {"epochs": 1, "batch_size": 64, "lr": 0.05}},
        variants=[
            {"name": "int8", "steps": [{"method": "quantize_int8", "params": {"calibration_batches": 2}}]}
        ],
        probes=[
            {"name": "accuracy", "params": {"splits": ["test"], "batch_size": 100}},
            {"name": "classes", "params": {"bootstrap": 0, "exemplars": 0}},
            {"name": "efficiency", "params": {"batch_sizes": [1], "repeats": 2, "warmup": 0}},
        ],
    )
    out = tmp_path / "run"
    run_experiment(Experiment.from_dict(cfg), out)
    with Store(out) as store:
        plan = store.meta("plan")
        for job in plan:
            stored = store.result(job["key"])
            assert stored is not None and stored.status == "ok"
            devices = {r["what"]: r["device"] for r in stored.tables[MEASURED_ON]}
            assert devices["outputs"] == "cpu", job
    html = (out / "report.html").read_text()
    assert "Measured on" in html and "Where the numbers were measured" in html
