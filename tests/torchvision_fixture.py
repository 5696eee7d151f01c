"""torchvision's own ResNet, VGG-16 and SqueezeNet, as a fixture compaudit's models are held to.

compaudit builds these networks without torchvision (it does not import with the project's torch),
so ``tests/data/torchvision_state_dicts.json`` records what torchvision itself builds: for each
architecture at 1000 classes, every ``state_dict`` key with its shape, the parameter count, and the
logits torchvision's model gives on a fixed 2x3x64x64 input when every tensor of its state dict is
filled by :func:`synthetic_state` (seeded NumPy draws, so no weights need to be committed). The
test (``tests/test_imagenet_models.py``) fills compaudit's model the same way and must reproduce
those logits: same keys, same shapes *and* the same forward computation.

The fixture was written by running this file with torchvision installed (not compaudit's models)::

    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    PYTHONPATH=. /tmp/tvenv/bin/python tests/torchvision_fixture.py

torchvision's input is normalised by hand here (ImageNet mean/std); compaudit's models normalise
inside (their ``normalize`` module), so they get the raw [0, 1] input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "data" / "torchvision_state_dicts.json"

#: compaudit's name -> torchvision's builder name
ARCHITECTURES = {
    "resnet18_imagenet": "resnet18",
    "resnet34_imagenet": "resnet34",
    "resnet50_imagenet": "resnet50",
    "resnet101_imagenet": "resnet101",
    "resnet152_imagenet": "resnet152",
    "vgg16": "vgg16",
    "vgg16_bn": "vgg16_bn",
    "squeezenet1_0": "squeezenet1_0",
    "squeezenet1_1": "squeezenet1_1",
}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT_SHAPE = (2, 3, 64, 64)
#: how many leading logits of each image the fixture keeps (besides their argmax over all 1000)
LOGITS_KEPT = 16


def synthetic_input(seed: int = 0) -> torch.Tensor:
    """The fixed input batch in [0, 1]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random(INPUT_SHAPE, dtype=np.float32))


def synthetic_state(shapes: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict for ``(key, shape)`` pairs from seeded NumPy draws, scaled so that activations
    stay of order one through 152 layers: conv/linear weights He-normal by fan-in, BN weights and
    running variances in [0.5, 1.5], biases and running means small."""
    rng = np.random.default_rng(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes:
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.long)
            continue
        if leaf == "weight" and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in))
        elif leaf in ("weight", "running_var"):
            values = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        else:  # biases, running means
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        state[key] = torch.from_numpy(values)
    return state


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


def main() -> None:
    import torchvision  # only where torchvision is installed: writing the fixture

    x = synthetic_input()
    normalised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out: dict[str, Any] = {
        "source": (
            f"written by tests/torchvision_fixture.py from torchvision {torchvision.__version__} "
            f"(torch {torch.__version__}): torchvision.models.get_model(name, weights=None, num_classes=1000)"
        ),
        "input_shape": list(INPUT_SHAPE),
        "models": {},
    }
    for ours, theirs in ARCHITECTURES.items():
        model = torchvision.models.get_model(theirs, weights=None, num_classes=1000).eval()
        shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        model.load_state_dict(synthetic_state(shapes))
        with torch.no_grad():
            logits = model(normalised)
        out["models"][ours] = {
            "torchvision_name": theirs,
            "parameters": sum(p.numel() for p in model.parameters()),
            "state_dict": shapes,
            "logits": logits[:, :LOGITS_KEPT].tolist(),
            "argmax": logits.argmax(1).tolist(),
            "logit_scale": float(logits.abs().max()),
        }
        print(ours, out["models"][ours]["parameters"], out["models"][ours]["argmax"], file=sys.stderr)
    FIXTURE.write_text(json.dumps(out, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
