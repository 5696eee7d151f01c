"""Embedding features of ONNX Runtime variants read from the runtime's own intermediate values
(:mod:`compaudit.compress.onnx_features`), with the float model's layer names and aliases; the
surrogate where the values cannot be mapped (OpenVINO, a file without the exporter's metadata)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compaudit.compress import METHODS, CompressContext
from compaudit.compress.onnx import OrtModel
from compaudit.data import DataBundle
from compaudit.explain.embedding import capture, plan_layers
from compaudit.probes import PROBES, ProbeContext, ProbeResult
from compaudit.probes.embedding import feature_model
from compaudit.variant import Variant

#: every alias, a ReLU, a linear layer, and a container (a conv block: its output is its ReLU's)
LAYERS = ["penultimate", "first_fc", "logits", "last3", "classifier.1", "classifier.3", "features.2"]


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    from compaudit import build_model

    torch.manual_seed(0)
    return build_model("vgg6", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.25}).eval()


def _variant(method_name: str, model: nn.Module, data: DataBundle, **params: Any) -> Variant:
    method = METHODS.get(method_name).from_spec(method_name, params)
    ctx = CompressContext(data=data, seed=0, device=torch.device("cpu"))
    final = method.apply(copy.deepcopy(model), ctx)
    variant = Variant(method_name, f"{method_name}-key", final, parent="base-key")
    variant.deploy(method.deploy(final, ctx))
    variant.surrogate = final  # as the builder sets it: the float model the file came from
    return variant


@pytest.fixture(scope="module")
def onnx_fp32(vgg: nn.Module, digits16: DataBundle) -> Variant:
    return _variant("onnx", vgg, digits16)


@pytest.fixture(scope="module")
def onnx_int8(vgg: nn.Module, digits16: DataBundle) -> Variant:
    return _variant("onnx_int8", vgg, digits16, calibration_batches=2)


def _ort(variant: Variant) -> OrtModel:
    assert isinstance(variant.deployed, OrtModel)
    return variant.deployed


def _images(data: DataBundle, n: int = 40) -> torch.Tensor:
    x: torch.Tensor = data.test.x[:n]  # type: ignore[attr-defined]
    return x


def _probe(variant: Variant, base: nn.Module, data: DataBundle, layers: list[str]) -> ProbeResult:
    ctx = ProbeContext(
        data=data, baseline=Variant("baseline", "base-key", base), device=torch.device("cpu"), seed=0
    )
    params = {"samples": 30, "layers": layers, "bootstrap": 0, "plot_points": 0}
    return PROBES.get("embedding").from_spec("embedding", params).run(variant, ctx)


def _surrogate_flag(res: ProbeResult) -> float:
    found = [m.value for m in res.metrics if m.name == "surrogate"]
    assert len(found) == 1
    return found[0]


def test_onnx_fp32_features_are_the_float_models(
    onnx_fp32: Variant, vgg: nn.Module, digits16: DataBundle
) -> None:
    x = _images(digits16)
    graph, on_surrogate = feature_model(onnx_fp32, x[:8])
    assert not on_surrogate and graph is not onnx_fp32.surrogate
    # the same layers as on the float model, found by the same rules
    assert plan_layers(graph, LAYERS, x[:2]).taps == plan_layers(vgg, LAYERS, x[:2]).taps
    got = capture(graph, x, LAYERS, batch_size=16)
    want = capture(vgg, x, LAYERS, batch_size=16)
    assert set(got) == set(want) == {*LAYERS, "last3[1]", "last3[2]", "last3[3]"} - {"last3"}
    for label, w in want.items():
        assert got[label].shape == w.shape, label
        scale = float(w.abs().max())
        assert scale > 0
        assert float((got[label] - w).abs().max()) <= 1e-4 * scale, label
    assert (got["first_fc"] >= 0).all()  # after its ReLU, as on the float model


def test_onnx_int8_features_are_the_int8_runtimes(
    onnx_int8: Variant, vgg: nn.Module, digits16: DataBundle
) -> None:
    import onnx
    import onnxruntime as ort

    x = _images(digits16)
    graph, on_surrogate = feature_model(onnx_int8, x[:8])
    assert not on_surrogate
    got = capture(graph, x, ["penultimate", "logits", "first_fc"])
    floats = capture(vgg, x, ["penultimate", "logits", "first_fc"])
    for label, w in floats.items():
        rel = float((got[label] - w).norm() / w.norm())
        assert 0.0 < rel < 0.1, (label, rel)  # the int8 model's values: close, not the float model's
    deployed = _ort(onnx_int8)
    assert torch.equal(got["logits"], deployed(x))  # the logits of the session that is audited

    # a session of the int8 file opened here, the last Gemm's (dequantized) input added as an output
    proto = onnx.load_from_string(deployed.data)
    last_gemm = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    producer = next(n for n in proto.graph.node if last_gemm.input[0] in n.output)
    assert producer.op_type == "DequantizeLinear"
    proto.graph.output.append(onnx.ValueInfoProto(name=last_gemm.input[0]))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    direct = sess.run([last_gemm.input[0]], {"x": x.numpy()})[0]
    assert np.allclose(got["penultimate"].numpy(), direct, rtol=0, atol=1e-7)


def test_the_probe_reads_the_runtime_and_notes_fused_layers(
    onnx_int8: Variant, vgg: nn.Module, digits16: DataBundle
) -> None:
    before = dict(_ort(onnx_int8).files)
    # classifier.0's output is not computed by the int8 runtime: its ReLU is folded into the
    # requantization of its output; classifier.1 (after the ReLU) is
    res = _probe(onnx_int8, vgg, digits16, ["penultimate", "classifier.0", "classifier.1"])
    assert _surrogate_flag(res) == 0.0
    notes = res.tables["notes"]
    assert [r["layer"] for r in notes] == ["classifier.0"]
    assert "onnxruntime computes no value for the output of module 'classifier.0'" in str(notes[0]["note"])
    assert {m.params.get("layer") for m in res.metrics if m.name == "silhouette"} == {
        "penultimate",
        "classifier.1",
    }
    assert _ort(onnx_int8).files == before  # the audited file is untouched


def test_a_deployed_onnx_file_maps_unless_its_metadata_is_stripped(
    onnx_fp32: Variant, vgg: nn.Module, digits16: DataBundle, tmp_path: Path
) -> None:
    import onnx

    data = _ort(onnx_fp32).data
    exported = tmp_path / "model.onnx"
    exported.write_bytes(data)
    proto = onnx.load_from_string(data)
    for node in proto.graph.node:
        del node.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    stripped.write_bytes(proto.SerializeToString())
    x = _images(digits16)
    for path, flag in ((exported, 0.0), (stripped, 1.0)):
        variant = _variant("deployed_file", vgg, digits16, path=str(path))
        assert _surrogate_flag(_probe(variant, vgg, digits16, ["penultimate"])) == flag
        model, on_surrogate = feature_model(variant, x[:8])
        assert on_surrogate == bool(flag)
        if not flag:
            got = capture(model, x, ["penultimate"])["penultimate"]
            assert torch.allclose(got, capture(vgg, x, ["penultimate"])["penultimate"], atol=1e-6)
    assert exported.read_bytes() == data


def test_openvino_stays_on_the_surrogate(vgg: nn.Module, digits16: DataBundle) -> None:
    pytest.importorskip("openvino")
    variant = _variant("openvino", vgg, digits16)
    assert feature_model(variant, _images(digits16, 8)) == (variant.surrogate, True)
    assert _surrogate_flag(_probe(variant, vgg, digits16, ["penultimate"])) == 1.0
