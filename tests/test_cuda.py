"""Every stage on ``device: cuda``: data and models on the GPU, batched attacks there, int8 models on
the CPU (their kernels are CPU kernels), and results that say where each number was measured.

Skipped without a CUDA device (``pytest -m cuda`` selects these tests on a GPU machine).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit import Experiment, Store, run_experiment
from compaudit.cli import export_rows
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")

#: every compression family, small
VARIANTS: list[dict[str, Any]] = [
    {"name": "pruned", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]},
    {
        "name": "filters",
        "steps": [{"method": "prune_filters", "params": {"ratio": 0.5}}],
        "finetune": {"epochs": 1},
    },
    {
        "name": "w4a8",
        "steps": [{"method": "quantize_kbit", "params": {"preset": "w4a8", "calibration_batches": 4}}],
    },
    {"name": "int8", "steps": [{"method": "quantize_int8", "params": {"calibration_batches": 4}}]},
    {
        "name": "distilled",
        "steps": [
            {
                "method": "distill",
                "params": {
                    "student": "student_cnn",
                    "student_params": {"width": 0.5},
                    "train": {"epochs": 1},
                },
            }
        ],
    },
]

#: every probe, with small sample counts
PROBES: list[dict[str, Any]] = [
    {"name": "accuracy", "params": {"batch_size": 64}},
    {"name": "classes", "params": {"bootstrap": 50, "exemplars": 2}},
    {
        "name": "adversarial",
        "params": {
            "samples": 64,
            "batch_size": 32,
            "attacks": [
                {"attack": "pgd", "eps": [0.1], "params": {"steps": 5}},
                {"attack": "fgsm", "eps": [0.1]},
                {"attack": "deepfool", "params": {"steps": 10}, "eps": [1.0]},
            ],
            "sanity_steps": 3,
        },
    },
    {
        "name": "shift",
        "params": {"corruptions": ["gaussian_noise", "contrast"], "severities": [1, 3], "samples": 64},
    },
    {
        "name": "explain",
        "params": {"methods": ["gradcam", "cam"], "samples": 32, "grid": 2, "batch_size": 16},
    },
    {"name": "embedding", "params": {"samples": 60, "plot_points": 20, "adversarial": True, "steps": 3}},
    {"name": "efficiency", "params": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1}},
]


class DeviceLog:
    """A global forward hook: the device of the first input of every float conv/linear call and
    of every call of a deployed int8 model, in call order."""

    def __init__(self) -> None:
        self.float_calls: list[str] = []
        self.int8_calls: list[str] = []

    def __call__(self, module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        from compaudit.compress.quantize import Int8Model

        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):  # torch.fx tracing passes proxies: leave them alone
            return
        if isinstance(module, Int8Model):
            self.int8_calls.append(x.device.type)
        elif isinstance(module, nn.Conv2d | nn.Linear) and any(
            p.is_floating_point() for p in module.parameters()
        ):
            self.float_calls.append(x.device.type)


@pytest.fixture(scope="module")
def device_log() -> Iterator[DeviceLog]:
    log = DeviceLog()
    handle = torch.nn.modules.module.register_module_forward_hook(log)
    try:
        yield log
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory: pytest.TempPathFactory, device_log: DeviceLog) -> Path:
    out = tmp_path_factory.mktemp("cuda") / "run"
    cfg = tiny_config(
        device="cuda",
        model={"name": "student_cnn", "train": {"epochs": 1, "batch_size": 32, "lr": 0.1}},
        variants=VARIANTS,
        probes=PROBES,
    )
    run_experiment(Experiment.from_dict(cfg), out)
    return out


def stored_devices(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    """``{(variant, probe): {what: device}}`` of every stored result."""
    got: dict[tuple[str, str], dict[str, str]] = {}
    with Store(out) as store:
        for job in store.meta("plan"):
            res = store.result(job["key"])
            assert res is not None and res.status == "ok", (job, res and res.error)
            got[(job["variant"], job["probe"])] = {r["what"]: r["device"] for r in res.tables["measured_on"]}
    return got


def value(rows: list[dict[str, Any]], variant: str, probe: str, metric: str, **params: Any) -> float:
    hits = [
        r["value"]
        for r in rows
        if r["variant"] == variant
        and r["probe"] == probe
        and r["metric"] == metric
        and all(r.get(k) == v for k, v in params.items())
    ]
    assert len(hits) == 1, (variant, probe, metric, params, hits)
    return float(hits[0])


# ---------------------------------------------------------------- the whole run on the GPU


def test_every_result_is_ok_and_says_where_it_was_measured(cuda_run: Path) -> None:
    devices = stored_devices(cuda_run)
    assert {v for v, _ in devices} == {"baseline", "pruned", "filters", "w4a8", "int8", "distilled"}
    assert {p for _, p in devices} == {p["name"] for p in PROBES}
    for (variant, probe), where in devices.items():
        expected = "cpu" if variant == "int8" else "cuda"
        assert where["outputs"].split(":")[0] == expected, (variant, probe, where)
        if probe == "efficiency":
            assert where["latency"].split(":")[0] == expected, (variant, where)
    # the int8 variant's white-box routes run on its surrogate, on the GPU; its own routes on the CPU
    adv = devices[("int8", "adversarial")]
    assert adv["attack (bpda)"].startswith("cuda") and adv["attack (transfer)"].startswith("cuda")
    assert adv["attack (naive)"] == "cpu"
    assert devices[("int8", "explain")]["saliency maps"].startswith("cuda")
    assert devices[("pruned", "adversarial")]["attack (white-box)"].startswith("cuda")


def test_float_models_ran_on_the_gpu_and_int8_models_on_the_cpu(
    cuda_run: Path, device_log: DeviceLog
) -> None:
    calls = device_log.float_calls
    assert calls.count("cuda") > 1000  # training, predictions, attacks, saliency, features
    # the only CPU pass of a float layer is the model check before the run starts
    first_cuda = calls.index("cuda")
    assert "cpu" not in calls[first_cuda:]
    assert device_log.int8_calls and set(device_log.int8_calls) == {"cpu"}


def test_an_attack_lowers_accuracy_on_the_gpu(cuda_run: Path) -> None:
    rows = export_rows(cuda_run)
    clean = value(rows, "baseline", "adversarial", "clean_accuracy")
    robust = value(
        rows, "baseline", "adversarial", "robust_accuracy", attack="pgd", eps=0.1, route="white-box"
    )
    assert clean > 0.5
    assert robust < clean - 0.2
    bpda = value(rows, "int8", "adversarial", "robust_accuracy", attack="pgd", eps=0.1, route="bpda")
    assert bpda < value(rows, "int8", "adversarial", "clean_accuracy")


def test_the_report_names_the_devices(cuda_run: Path) -> None:
    html = (cuda_run / "report.html").read_text()
    assert "Measured on" in html and "cuda:" in html and "cpu" in html


# ---------------------------------------------------------------- CPU and GPU agree


def test_cpu_and_gpu_agree_on_clean_accuracy(tmp_path: Path, trained_state: dict[str, torch.Tensor]) -> None:
    checkpoint = tmp_path / "tiny.pt"
    torch.save(trained_state, checkpoint)
    results = {}
    for device in ("cpu", "cuda"):
        cfg = tiny_config(
            device=device,
            model={"name": "student_cnn", "params": {"width": 0.5}, "checkpoint": str(checkpoint)},
            variants=[VARIANTS[0], VARIANTS[3]],  # unstructured pruning, int8
            probes=[{"name": "accuracy", "params": {"splits": ["test"]}}],
        )
        run_experiment(Experiment.from_dict(cfg), tmp_path / device, report=False)
        results[device] = export_rows(tmp_path / device)
    for variant in ("baseline", "pruned", "int8"):
        cpu = value(results["cpu"], variant, "accuracy", "accuracy", split="test")
        gpu = value(results["cuda"], variant, "accuracy", "accuracy", split="test")
        assert abs(cpu - gpu) <= 2 / 359 + 1e-9, variant  # at most two of the 359 test images
        nll_cpu = value(results["cpu"], variant, "accuracy", "nll", split="test")
        assert value(results["cuda"], variant, "accuracy", "nll", split="test") == pytest.approx(
            nll_cpu, rel=0.02
        )


# ---------------------------------------------------------------- single stages


def test_predictions_and_attacks_stay_on_the_gpu(trained_cnn: nn.Module, digits16: Any) -> None:
    from compaudit.attacks import ATTACKS
    from compaudit.inference import predict

    model = trained_cnn.to(CUDA)
    on_gpu = predict(model, digits16.test, device=CUDA)
    on_cpu = predict(copy.deepcopy(model).cpu(), digits16.test, device="cpu")
    assert on_gpu.logits.device.type == "cpu"  # results come back to the CPU, once
    assert torch.allclose(on_gpu.logits, on_cpu.logits, atol=1e-4)
    x, y = digits16.test.x[:64].to(CUDA), digits16.test.y[:64].to(CUDA)
    suite: list[tuple[str, dict[str, Any]]] = [
        ("fgsm", {"eps": 0.1}),
        ("pgd", {"eps": 0.1, "steps": 5}),
        ("pgd_l2", {"eps": 1.0, "steps": 5}),
        ("deepfool", {"steps": 10}),
        ("cw", {"steps": 10}),
        ("ddn", {"steps": 10}),
    ]
    for name, params in suite:
        res = (
            ATTACKS.get(name)
            .from_spec(name, params)
            .run(model, x, y, generator=torch.Generator().manual_seed(0))
        )
        assert res.adv.device.type == "cuda" and res.success.device.type == "cuda", name
        assert res.norm.device.type == "cuda", name
        if name != "cw":  # ten C&W steps from c = 1 may fool nothing yet
            assert bool(res.success.any()), name


def test_training_resumes_identically_on_the_gpu(tmp_path: Path, digits16: Any) -> None:
    """The resume file keeps the CUDA generator too: dropout masks of a resumed run are the same."""
    from compaudit import fit
    from compaudit.config import TrainSpec

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))

    spec = TrainSpec(epochs=3, batch_size=64, lr=0.05)
    reference = mlp()
    torch.cuda.manual_seed(1)
    fit(reference, digits16, spec, seed=3, device=CUDA)

    class Stop(Exception):
        pass

    state = tmp_path / "state.pt"
    resumed = mlp()
    torch.cuda.manual_seed(1)
    calls = {"n": 0}
    original = resumed.forward

    def stop_in_epoch_two(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 25:  # epoch 1 has 21 batches and a validation pass
            raise Stop
        out: torch.Tensor = original(x)
        return out

    resumed.forward = stop_in_epoch_two
    with pytest.raises(Stop):
        fit(resumed, digits16, spec, seed=3, device=CUDA, resume_path=state)
    assert state.is_file()
    resumed.forward = original
    torch.cuda.manual_seed(12345)  # whatever the generator holds now, the resume file restores it
    fit(resumed, digits16, spec, seed=3, device=CUDA, resume_path=state)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_fake_quant_calibration_stays_on_the_gpu(trained_cnn: nn.Module, digits16: Any) -> None:
    from compaudit.compress import METHODS, CompressContext
    from compaudit.compress.fakequant import ActivationQuantizer

    method = METHODS.get("quantize_kbit").from_spec(
        "quantize_kbit", {"preset": "w4a8", "calibration_batches": 2}
    )
    ctx = CompressContext(data=digits16, seed=0, device=CUDA)
    model = method.apply(trained_cnn.to(CUDA), ctx)
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    assert quantizers and all(q.lo.device.type == "cuda" and q.hi.device.type == "cuda" for q in quantizers)
    assert any(float(q.hi) > 0 for q in quantizers)  # calibrated
