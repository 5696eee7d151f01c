"""Pretrained ImageNet weights that users already have: torchvision's files in torch's hub cache.

Anyone who has once built a pretrained torchvision model has its weights file in torch's hub cache
(``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints`` or
``~/.cache/torch/hub/checkpoints``). The ImageNet-layout models of compaudit have torchvision's
keys, so ``params: {weights: IMAGENET1K_V1}`` loads that file — never downloading it: a file not in
the cache is a one-line error that says where it was looked for and where to get it. The file name
carries the first hex digits of its SHA-256 (torchvision's convention); a file whose digest does
not start with them is refused. The file names below are those of torchvision 0.29's weight enums
(``torchvision.models.get_model_weights(name)``), with torchvision's top-1 accuracy on ImageNet.
A classifier for another class count is replaced (:func:`compaudit.models.load_pretrained`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from compaudit.errors import ModelError
from compaudit.models.weights import load_pretrained, read_state_dict

#: architecture -> weights name -> (file name in the hub cache, torchvision's ImageNet top-1 %)
TORCHVISION_WEIGHTS: dict[str, dict[str, tuple[str, float]]] = {
    "resnet18": {"IMAGENET1K_V1": ("resnet18-f37072fd.pth", 69.758)},
    "resnet34": {"IMAGENET1K_V1": ("resnet34-b627a593.pth", 73.314)},
    "resnet50": {
        "IMAGENET1K_V1": ("resnet50-0676ba61.pth", 76.13),
        "IMAGENET1K_V2": ("resnet50-11ad3fa6.pth", 80.858),
    },
    "resnet101": {
        "IMAGENET1K_V1": ("resnet101-63fe2227.pth", 77.374),
        "IMAGENET1K_V2": ("resnet101-cd907fc2.pth", 81.886),
    },
    "resnet152": {
        "IMAGENET1K_V1": ("resnet152-394f9c45.pth", 78.312),
        "IMAGENET1K_V2": ("resnet152-f82ba261.pth", 82.284),
    },
    "vgg16": {"IMAGENET1K_V1": ("vgg16-397923af.pth", 71.592)},
    "vgg16_bn": {"IMAGENET1K_V1": ("vgg16_bn-6c64b313.pth", 73.36)},
    "squeezenet1_0": {"IMAGENET1K_V1": ("squeezenet1_0-b66bff10.pth", 58.092)},
    "squeezenet1_1": {"IMAGENET1K_V1": ("squeezenet1_1-b8a52dc0.pth", 58.178)},
}
#: torchvision's DEFAULT for each architecture
DEFAULT_WEIGHTS = {
    arch: ("IMAGENET1K_V2" if "IMAGENET1K_V2" in table else "IMAGENET1K_V1")
    for arch, table in TORCHVISION_WEIGHTS.items()
}
_BASE_URL = "https://download.pytorch.org/models/"


def hub_checkpoints_dir() -> Path:
    """Where torch keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(arch: str, weights: str) -> Path:
    """The cached file of torchvision's ``weights`` (``IMAGENET1K_V1``, ``DEFAULT``…) for ``arch``,
    checked against the digest in its name; a one-line :class:`ModelError` when it is not there."""
    table = TORCHVISION_WEIGHTS.get(arch)
    if table is None:
        raise ModelError(f"no torchvision weights are known for {arch!r}")
    name = DEFAULT_WEIGHTS[arch] if weights == "DEFAULT" else weights
    if name not in table:
        raise ModelError(
            f"weights {weights!r} unknown for {arch}; torchvision has: {', '.join(['DEFAULT', *table])}"
        )
    filename = table[name][0]
    path = hub_checkpoints_dir() / filename
    if not path.is_file():
        raise ModelError(
            f"weights {arch} {name} are not in torch's hub cache ({path}); compaudit never downloads: "
            f"fetch {_BASE_URL}{filename} into that folder, or give the file as model.checkpoint"
        )
    check_digest(path, f"torchvision's {arch} {name}")
    return path


#: torch.hub's convention: ``name-<first hex digits of the file's SHA-256>.ext``
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


def check_digest(path: Path, what: str) -> None:
    """Refuse a cached file whose SHA-256 does not start with the hex digits in its name (a partial
    or different file), as torch.hub checks what it downloads; a name without digits passes."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ModelError(
            f"{path} is not {what}: its SHA-256 does not start with {match.group(1)} (a partial or "
            "different file; delete it and fetch it again)"
        )


def load_torchvision_weights(model: nn.Module, arch: str, weights: str) -> None:
    """Load torchvision's cached ``weights`` for ``arch`` into ``model`` (replacing a classifier of
    another class count; recorded on the model, see :func:`compaudit.models.pretrained_of`)."""
    path = weights_file(arch, weights)
    if next(iter(model.parameters())).is_meta:
        return  # a model built on the meta device (for its shapes) takes no weights
    load_pretrained(model, read_state_dict(path), source=f"torchvision {arch} {weights} ({path.name})")
