"""Every compression method and every probe on every ImageNet-layout architecture (issue 16).

Contract tests generated over (architecture x method) and (architecture x probe) for the nine
torchvision-layout networks (ResNet-18/34/50/101/152, VGG-16, VGG-16-BN, SqueezeNet 1.0/1.1), on
16 synthetic 64x64 RGB images of 2 classes, untrained (torchvision's initialisation, seeded): each
checks properties that fail when a method or probe mishandles the architecture — a residual or
concatenated channel pruned on one side only, the ``normalize`` module lost by FX tracing, the
classifier pruned, CAM on a head it does not fit, Grad-CAM reading the class conv, a layer alias
that does not resolve, a metric that is not finite without a declared reason.

The default run keeps every architecture but only cheap combinations (:data:`DEFAULT_METHODS`,
:data:`DEFAULT_PROBES`: one representative per family for the expensive pairs, a cheap method and
probe for each of the others, and the saliency sites and maps of all nine); the full matrix is
marked ``slow`` (``make test-slow``).

An untrained network predicts one class for almost every input, so agreeing on the argmax is
nearly free; the int8 check therefore also asks the logit margins of the int8 and float models to
correlate over the inputs, and their logits to be close.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compaudit import METHODS, build_model
from compaudit.compress import CompressContext, make_permanent
from compaudit.compress.filters import kept_filters
from compaudit.data import DataBundle
from compaudit.data.base import ArrayDataset
from compaudit.errors import MethodError
from compaudit.explain import SALIENCY, NotApplicableError, explain
from compaudit.explain.embedding import plan_layers
from compaudit.explain.layers import gap_head
from compaudit.models import classifier_head
from compaudit.models.normalize import IMAGENET_MEAN, IMAGENET_STD
from compaudit.probes import PROBES, ProbeContext, ProbeResult
from compaudit.probes.efficiency import count_macs
from compaudit.variant import Variant

RESNETS = tuple(f"resnet{d}_imagenet" for d in (18, 34, 50, 101, 152))
VGGS = ("vgg16", "vgg16_bn")
SQUEEZENETS = ("squeezenet1_0", "squeezenet1_1")
ARCHS = (*RESNETS, *VGGS, *SQUEEZENETS)
SIZE = 64
CLASSES = 2

#: the smallest useful parameters of each method (1 calibration batch, 1 epoch of 2 batches)
PARAMS: dict[str, dict[str, Any]] = {
    "prune_unstructured": {"sparsity": 0.5},
    "prune_filters": {"ratio": 0.5},
    "quantize_int8": {"calibration_batches": 1, "batch_size": 16},
    "quantize_kbit": {"weight_bits": 4, "act_bits": 8, "calibration_batches": 1, "batch_size": 16},
    "qat": {
        "weight_bits": 8,
        "act_bits": 8,
        "epochs": 1,
        "calibration_batches": 1,
        "train": {"batch_size": 8},
    },
    "distill": {"student": "resnet18_imagenet", "train": {"epochs": 1, "batch_size": 8}},
    "ablate": {"layers": 1, "train": {"epochs": 1, "batch_size": 16}},
    "retrain": {"train": {"epochs": 1, "batch_size": 8}},
    "onnx": {},
    "onnx_int8": {"calibration_batches": 1, "batch_size": 16},
    "openvino": {},
    "openvino_int8": {"calibration_batches": 1, "batch_size": 16},
    "deployed_file": {"path": "the architecture exported by the test (TorchScript exporter)"},
}

#: the deployment targets (the file that ships, run by its runtime)
RUNTIMES = ("onnx", "onnx_int8", "openvino", "openvino_int8", "deployed_file")
#: the architectures the deployment targets run on in the slow matrix (the rest export the same
#: layer kinds; VGG-16's 0.5 GB file and ResNet-152's export add minutes for nothing new)
RUNTIME_ARCHS = ("resnet18_imagenet", "resnet50_imagenet", "vgg16_bn", "squeezenet1_0", "squeezenet1_1")

#: the distillation student of each teacher: seed 001 distils ResNet-152 into ResNet-18 (every
#: ResNet teaches ResNet-18 here); VGG-16 and SqueezeNet teach SqueezeNet 1.1 (another layout)
STUDENTS = {
    **{a: "resnet18_imagenet" for a in RESNETS},
    **{a: "squeezenet1_1" for a in (*VGGS, *SQUEEZENETS)},
}

#: (architecture, method) pairs of the default run; the rest of the matrix is slow
DEFAULT_METHODS = {
    *(("squeezenet1_1", m) for m in PARAMS),  # every method on the cheapest network
    ("squeezenet1_0", "prune_filters"),
    ("resnet18_imagenet", "quantize_int8"),
    ("resnet18_imagenet", "prune_unstructured"),
    ("resnet34_imagenet", "prune_filters"),
    ("resnet50_imagenet", "quantize_kbit"),
    ("resnet101_imagenet", "prune_filters"),
    ("resnet152_imagenet", "prune_filters"),  # bottlenecks and their downsample branches
    ("resnet152_imagenet", "distill"),  # seed 001: ResNet-152 teacher, ResNet-18 student
    ("vgg16", "ablate"),  # seed 000: VGG-16 ablated as VGG-6 is
    ("vgg16_bn", "prune_filters"),
}

#: the smallest useful parameters of each probe on 16 images
PROBE_PARAMS: dict[str, dict[str, Any]] = {
    "accuracy": {},
    "efficiency": {"batch_sizes": [1], "repeats": 1, "warmup": 0},
    "classes": {"bootstrap": 20, "exemplars": 1},
    "shift": {"corruptions": ["gaussian_noise"], "severities": [1], "samples": 16},
    "explain": {"methods": ["cam", "gradcam"], "samples": 8, "grid": 1, "batch_size": 8, "bootstrap": 0},
    "embedding": {"layers": ["penultimate", "first_fc"], "samples": 16, "plot_points": 4, "bootstrap": 0},
    "adversarial": {
        "samples": 8,
        "sanity_steps": 2,
        "convergence_factor": 2,
        "attacks": [
            {"attack": "fgsm", "eps": [0.05]},
            {"attack": "pgd", "eps": [0.05], "params": {"steps": 2}},
        ],
    },
}

#: (architecture, probe, variant) triples of the default run: ``float`` the baseline itself,
#: ``int8`` its quantize_int8 variant (deployed int8 kernels, fake-quant surrogate)
DEFAULT_PROBES = {
    *(("squeezenet1_1", p, "float") for p in PROBE_PARAMS),  # every probe on the cheapest network
    ("squeezenet1_1", "explain", "int8"),
    ("squeezenet1_1", "embedding", "int8"),
    ("squeezenet1_1", "efficiency", "int8"),
    ("squeezenet1_0", "explain", "float"),
    ("resnet18_imagenet", "explain", "float"),
    ("resnet18_imagenet", "embedding", "float"),
    ("resnet18_imagenet", "accuracy", "int8"),
    ("resnet34_imagenet", "classes", "float"),
    ("resnet50_imagenet", "shift", "float"),
    ("resnet101_imagenet", "accuracy", "float"),
    ("resnet152_imagenet", "efficiency", "float"),
    ("vgg16", "embedding", "float"),  # seed 000's t-SNE of the first FC layer
    ("vgg16_bn", "accuracy", "float"),
}

#: metrics each probe must report on every architecture (with these params, where given)
EXPECTED: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "accuracy": [("accuracy", {"split": "test"})],
    "efficiency": [("params", {}), ("macs", {}), ("latency", {"batch_size": 1})],
    "classes": [("accuracy", {}), ("class_accuracy", {})],
    "shift": [("corruption_accuracy", {"corruption": "gaussian_noise"}), ("target_accuracy", {})],
    "explain": [("adcc", {"method": "gradcam"})],
    "embedding": [("silhouette_features", {"layer": "penultimate"})],
    "adversarial": [("robust_accuracy", {"attack": "pgd"})],
}

#: what Grad-CAM reads by default (the last conv of layer4 / features, SqueezeNet's last fire
#: module, never its class conv) and where CAM reads (None: no CAM head)
SITES: dict[str, tuple[str, str | None]] = {
    "resnet18_imagenet": ("layer4.1.conv2", "avgpool"),
    "resnet34_imagenet": ("layer4.2.conv2", "avgpool"),
    "resnet50_imagenet": ("layer4.2.conv3", "avgpool"),
    "resnet101_imagenet": ("layer4.2.conv3", "avgpool"),
    "resnet152_imagenet": ("layer4.2.conv3", "avgpool"),
    "vgg16": ("features.28", None),
    "vgg16_bn": ("features.40", None),
    "squeezenet1_0": ("features.12", "classifier.3"),
    "squeezenet1_1": ("features.12", "classifier.3"),
}


def _cases(pairs: list[tuple[str, ...]], default: set[tuple[str, ...]]) -> list[Any]:
    return [
        pytest.param(*pair, id="-".join(pair), marks=() if pair in default else pytest.mark.slow)
        for pair in pairs
    ]


METHOD_CASES = _cases(
    [(a, m) for a in ARCHS for m in PARAMS if m not in RUNTIMES or a in RUNTIME_ARCHS], DEFAULT_METHODS
)
PROBE_CASES = _cases(
    [(a, p, kind) for a in ARCHS for p in PROBE_PARAMS for kind in ("float", "int8")], DEFAULT_PROBES
)

# ---------------------------------------------------------------- shared models and data

_MODELS: dict[str, nn.Module] = {}
_INT8: dict[str, Variant] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_models() -> Iterator[None]:
    """The models built here are shared by this module's tests (VGG-16 takes seconds to build and
    holds 0.5 GB); they go when the module ends."""
    yield
    _MODELS.clear()
    _INT8.clear()


def model_of(arch: str) -> nn.Module:
    """The untrained ``arch`` (seeded), in eval mode, shared: a test must leave it as it found it
    (which the method and probe contracts check)."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        _MODELS[arch] = build_model(arch, input_shape=(3, SIZE, SIZE), num_classes=CLASSES).eval()
    return _MODELS[arch]


@pytest.fixture(scope="module")
def data() -> DataBundle:
    """16 noise images of 2 classes at 64x64 (class 1 brighter), the same for every split."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(16) % CLASSES
    x = 0.6 * torch.rand(16, 3, SIZE, SIZE, generator=gen) + 0.3 * y.view(-1, 1, 1, 1).float()
    images = ArrayDataset(x, y)
    return DataBundle("noise64", images, images, images, ("dark", "bright"), (3, SIZE, SIZE))


def context(data: DataBundle, *, restoring: bool = False) -> CompressContext:
    return CompressContext(data=data, seed=0, device=torch.device("cpu"), restoring=restoring)


def int8_variant(arch: str, data: DataBundle) -> Variant:
    """``arch``'s quantize_int8 variant as a run builds it (the last one built is kept)."""
    if arch not in _INT8:
        _INT8.clear()
        method = METHODS.get("quantize_int8").from_spec("quantize_int8", PARAMS["quantize_int8"])
        ctx = context(data)
        fake = method.apply(model_of(arch), ctx).eval()
        variant = Variant(
            "int8",
            "int8-key",
            fake,
            lineage=[method.describe()],
            parent="base-key",
            bits=method.weight_bits(),
        )
        variant.deploy(method.deploy(fake, context(data, restoring=True)))
        variant.surrogate = fake
        _INT8[arch] = variant
    return _INT8[arch]


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[bool], int]:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], hooks


def same(a: tuple[dict[str, Tensor], list[bool], list[bool], int], b: Any) -> bool:
    return a[1:] == b[1:] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(x)
    return out


def head_outputs(model: nn.Module) -> int:
    """The number of outputs of ``model``'s classifier layer (a Linear, or SqueezeNet's class conv)."""
    name = classifier_head(model)
    assert name is not None
    head = model.get_submodule(name)
    return int(head.out_features if isinstance(head, nn.Linear) else head.out_channels)  # type: ignore[arg-type]


def weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


# ---------------------------------------------------------------- the design of this matrix


def test_the_default_run_covers_every_architecture_method_and_probe() -> None:
    assert set(PARAMS) == set(METHODS.names()) and set(PROBE_PARAMS) == set(PROBES.names())
    assert {a for a, _ in DEFAULT_METHODS} == set(ARCHS)
    assert {a for a, _, _ in DEFAULT_PROBES} == set(ARCHS)
    assert {m for _, m in DEFAULT_METHODS} == set(PARAMS)
    assert {p for _, p, _ in DEFAULT_PROBES} == set(PROBE_PARAMS)
    assert set(SITES) == set(ARCHS)


# ---------------------------------------------------------------- architecture x method


@pytest.mark.parametrize(("arch", "method"), METHOD_CASES)
def test_method_on_architecture(arch: str, method: str, data: DataBundle, tmp_path: Path) -> None:
    base = model_of(arch)
    before = snapshot(base)
    params = dict(PARAMS[method])
    if method == "distill":
        params["student"] = STUDENTS[arch]
    if method == "deployed_file":  # a user's file: the architecture exported without compaudit
        params["path"] = tmp_path / f"{arch}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                copy.deepcopy(base),
                (data.test.x[:2],),  # type: ignore[attr-defined]
                str(params["path"]),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "n"}},
            )
    m = METHODS.get(method).from_spec(method, params)
    x = data.test.x  # type: ignore[attr-defined]
    ctx = context(data)
    if method == "ablate" and arch not in VGGS:
        # layer ablation needs a flat `features` + a linear classifier: VGG only; the rest is refused
        with pytest.raises(MethodError, match="cannot ablate") as err:
            m.apply(base, ctx)
        assert "\n" not in str(err.value)
        return

    out = m.apply(base, ctx).eval()
    assert out is not base and same(before, snapshot(base)), f"{method} changed the {arch} it was given"
    y = logits(out, x)
    assert y.shape == (len(x), CLASSES) and torch.isfinite(y).all()
    reference = logits(base, x)

    if method == "prune_filters":
        one = x[:1]
        assert count_macs(out, one) < 0.5 * count_macs(base, one)
        assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in base.parameters())
        assert classifier_head(out) == classifier_head(base) and head_outputs(out) == CLASSES
        # every other conv keeps round(out / 2) filters (residual and concatenated channels included)
        pruned = {n: q for n, q in out.named_modules() if isinstance(q, nn.Conv2d)}
        for n, conv in base.named_modules():
            if isinstance(conv, nn.Conv2d) and n != classifier_head(base):
                assert pruned[n].out_channels == kept_filters(conv.out_channels, 0.5), n
        if arch in SQUEEZENETS:
            # the class conv keeps its outputs; the concatenated expand branches shrink together
            head: Any = out.get_submodule("classifier.1")
            fire: Any = out.get_submodule("features.12")
            assert head.out_channels == CLASSES
            assert head.in_channels == fire.expand1x1.out_channels + fire.expand3x3.out_channels < 512
        if arch in RESNETS:
            # every block's output (residual branch and downsample) keeps the width of its stage
            for stage in ("layer1", "layer2", "layer3", "layer4"):
                blocks: Any = out.get_submodule(stage)
                last = "conv3" if hasattr(blocks[0], "conv3") else "conv2"
                widths = {int(getattr(b, last).out_channels) for b in blocks}
                if blocks[0].downsample is not None:
                    widths.add(int(blocks[0].downsample[0].out_channels))
                assert len(widths) == 1, (stage, widths)
    elif method == "prune_unstructured":
        plain = make_permanent(copy.deepcopy(out))
        zeros = sum(int((m.weight == 0).sum()) for m in weighted(plain))  # type: ignore[arg-type]
        total = sum(m.weight.numel() for m in weighted(plain))  # type: ignore[union-attr]
        assert zeros / total == pytest.approx(0.5, abs=0.01)
    elif method == "quantize_int8":
        # the ImageNet normalisation survives FX tracing, as buffers equal to the model's own
        buffers = dict(out.named_buffers())
        assert torch.equal(buffers["normalize.mean"].flatten(), torch.tensor(IMAGENET_MEAN))
        assert torch.equal(buffers["normalize.std"].flatten(), torch.tensor(IMAGENET_STD))
        deployment = m.deploy(make_permanent(copy.deepcopy(out)).eval(), context(data, restoring=True))
        assert deployment is not None and not deployment.gradient_path
        deployed = deployment.model
        assert not deployed(x[:2].clone().requires_grad_(True)).requires_grad
        q = logits(deployed, x)
        assert (q.argmax(1) == reference.argmax(1)).float().mean() >= 0.9
        margins = torch.stack([reference[:, 0] - reference[:, 1], q[:, 0] - q[:, 1]])
        assert float(torch.corrcoef(margins)[0, 1]) > 0.8
        assert float((q - reference).norm() / reference.norm()) < 0.15
    elif method in RUNTIMES:
        # the file as its runtime runs it: float inputs, the float model's logits (fp32: to 1e-4 of
        # their scale; int8: the same ranking of the two classes on most images), no gradient
        deployment = m.deploy(make_permanent(copy.deepcopy(out)).eval(), context(data, restoring=True))
        assert deployment is not None and not deployment.gradient_path
        assert deployment.runtime.startswith(("onnxruntime", "openvino")), deployment.runtime
        deployed = deployment.model
        assert not deployed(x[:2].clone().requires_grad_(True)).requires_grad
        q = logits(deployed, x)
        scale = float(reference.abs().max())
        if method.endswith("int8"):
            assert (q.argmax(1) == reference.argmax(1)).float().mean() >= 0.8
            assert float((q - reference).norm() / reference.norm()) < 0.25
        else:
            assert float((q - reference).abs().max()) <= 1e-4 * max(scale, 1.0)
        zeros, total = deployed.weight_zeros()  # type: ignore[operator]
        assert total == sum(w.weight.numel() for w in weighted(base))  # type: ignore[union-attr]
        assert deployed.file_bytes() > 0  # type: ignore[operator]
    elif method in ("quantize_kbit", "qat"):
        quantized = [m for m in out.modules() if hasattr(m, "weight_quantizer")]
        assert len(quantized) == len(weighted(base))
    elif method == "distill":
        assert type(out).__name__ == type(model_of(STUDENTS[arch])).__name__
        assert len(list(out.parameters())) == len(list(model_of(STUDENTS[arch]).parameters()))
    elif method == "ablate":
        convs = [m for m in base.modules() if isinstance(m, nn.Conv2d)]
        kept = [m for m in out.modules() if isinstance(m, nn.Conv2d)]
        assert len(kept) == len(convs) - 1
        assert all(torch.equal(a.weight, b.weight) for a, b in zip(kept, convs, strict=False))  # frozen
        fc: Any = out.get_submodule("classifier.0")
        assert fc.in_features == 512 * 7 * 7  # the adaptive 7x7 pool keeps VGG-16's FC width

    if arch == "squeezenet1_1" or (arch, method) not in DEFAULT_METHODS:
        # restoring replays the architecture: the saved state loads strictly, outputs match
        saved = out.state_dict()
        replay = m.apply(base, context(data, restoring=True))
        replay.load_state_dict(saved, strict=True)
        assert torch.allclose(logits(replay.eval(), x), y, atol=1e-5)


# ---------------------------------------------------------------- saliency sites and maps


@pytest.mark.parametrize("arch", ARCHS)
def test_saliency_sites_and_maps_on_architecture(arch: str, data: DataBundle) -> None:
    """Grad-CAM reads the last feature conv (never SqueezeNet's class conv), CAM the input of a GAP
    head where there is one; maps have the input's spatial size, are finite and non-negative."""
    model = model_of(arch)
    before = snapshot(model)
    x = data.test.x[:2]  # type: ignore[attr-defined]
    target = torch.tensor([0, 1])
    conv, cam = SITES[arch]
    assert SALIENCY.get("gradcam")("gradcam").where(model, x) == conv
    methods = ["gradcam"]
    if cam is None:
        with pytest.raises(NotApplicableError, match="global-average-pooling") as err:
            SALIENCY.get("cam")("cam").where(model, x)
        assert "\n" not in str(err.value)
    else:
        assert SALIENCY.get("cam")("cam").where(model, x) == cam
        methods.append("cam")
    for method in methods:
        maps = explain(model, x, target, method=method)
        assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all() and (maps >= 0).all()
    if arch in SQUEEZENETS:  # the CAM of a conv classifier head: the class map, whose mean is the logit
        site = gap_head(model, x)
        with torch.enable_grad():
            raw = SALIENCY.get("cam")("cam")._attribute(model, x, target, site)
        assert torch.allclose(raw.mean(dim=(1, 2)), logits(model, x)[torch.arange(2), target], atol=1e-6)
    assert same(before, snapshot(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_layer_aliases_resolve_on_architecture(arch: str, data: DataBundle) -> None:
    """``penultimate`` is what the classifier layer reads; ``first_fc`` is VGG-16's ``classifier.0``
    after its ReLU (seed 000's Fig. 2), a ResNet's only FC layer (its logits), and SqueezeNet has none."""
    plan = plan_layers(model_of(arch), ["penultimate", "first_fc", "logits"], data.test.x[:2])  # type: ignore[attr-defined]
    where = {label: (t.module, t.side) for label, t in plan.taps.items()}
    if arch in VGGS:
        assert where == {
            "penultimate": ("classifier.6", "input"),
            "first_fc": ("classifier.1", "output"),
            "logits": ("classifier.6", "output"),
        }
    elif arch in RESNETS:
        assert where == {
            "penultimate": ("fc", "input"),
            "first_fc": ("fc", "output"),
            "logits": ("fc", "output"),
        }
    else:
        assert where == {"penultimate": ("classifier.1", "input"), "logits": ("classifier.3", "output")}
        assert set(plan.missing) == {"first_fc"}


# ---------------------------------------------------------------- architecture x probe


def metric_values(res: ProbeResult, name: str, **params: Any) -> list[float]:
    return [
        m.value
        for m in res.metrics
        if m.name == name and all(m.params.get(k) == v for k, v in params.items())
    ]


@pytest.mark.parametrize(("arch", "probe", "kind"), PROBE_CASES)
def test_probe_on_architecture(arch: str, probe: str, kind: str, data: DataBundle) -> None:
    base = Variant("baseline", "base-key", model_of(arch))
    variant = base if kind == "float" else int8_variant(arch, data)
    ctx = ProbeContext(
        data=data,
        baseline=base,
        device=torch.device("cpu"),
        seed=0,
        domains={"other": data},
        source="noise64",
    )
    cls = PROBES.get(probe)
    models = [m for m in (variant.model, variant.deployed, variant.surrogate) if m is not None]
    before = [snapshot(m) for m in models]
    res = cls.from_spec(probe, PROBE_PARAMS[probe]).run(variant, ctx)
    assert all(same(b, snapshot(m)) for b, m in zip(before, models, strict=True)), f"{probe} changed {arch}"

    specs = cls.specs()
    reasons = [w.text for w in res.warnings] + [str(r) for r in res.tables.get("notes", [])]
    for m in res.metrics:
        assert m.name in specs and m.unit == specs[m.name].unit
        assert isinstance(m.value, float) and not math.isinf(m.value), (m.name, m.params, m.value)
        if math.isnan(m.value):
            assert specs[m.name].nan or reasons, f"{m.name} {m.params} is NaN without a declared reason"
    for name, params in EXPECTED[probe]:
        values = metric_values(res, name, **params)
        assert values and all(math.isfinite(v) for v in values), (name, params, values)

    if probe == "explain" and SITES[arch][1] is not None:
        # CAM applies to ResNets (GAP + fc) and SqueezeNet (conv classifier head), at the same site
        assert metric_values(res, "adcc", method="cam", layer=SITES[arch][1])
    if probe == "explain":
        assert metric_values(res, "adcc", method="gradcam", layer=SITES[arch][0])
    if probe == "embedding" and arch in VGGS:
        assert metric_values(res, "silhouette_features", layer="first_fc")
    if probe == "efficiency" and kind == "int8":
        assert metric_values(res, "file_bytes")[0] < 0.4 * 4 * sum(
            p.numel() for p in model_of(arch).parameters()
        )
    if kind == "int8" and probe in ("accuracy", "classes"):
        agreement = metric_values(res, "agreement") if probe == "accuracy" else []
        assert all(a >= 0.9 for a in agreement)
