"""Weights: reading state dicts safely, strict loading, and pretrained weights with a new head.

- :func:`read_state_dict` reads a checkpoint with ``torch.load(weights_only=True)`` (or a
  ``.safetensors`` file), unwrapping ``state_dict`` / ``model`` / ``model_state_dict``;
- :func:`load_state_strict` / :func:`load_checkpoint` load it when every key and shape fits;
- :func:`load_pretrained` also replaces a classifier whose only mismatch is the class count, and
  records what it loaded on the model (:class:`Pretrained`, read back by :func:`pretrained_of`).

A model that wraps a library's network under a prefix declares it as ``state_dict_prefix``; the
loaders add it to the keys of a plain state dict of that library (:func:`with_state_dict_prefix`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compaudit.errors import ModelError


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    try:
        st = importlib.import_module("safetensors.torch")
    except ImportError:
        raise ModelError(
            f"checkpoint {str(p)!r} is a .safetensors file, which needs the safetensors package: "
            "pip install safetensors"
        ) from None
    try:
        return dict(st.load_file(str(p), device="cpu"))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"checkpoint {str(p)!r} cannot be read as safetensors: {first}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: a ``.safetensors`` file (tensors only by design; needs the
    ``safetensors`` package), anything else with ``torch.load(weights_only=True)``; accepts a bare
    state dict or one wrapped under ``state_dict`` / ``model`` / ``model_state_dict``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"checkpoint file {str(p)!r} does not exist")
    obj: object
    if p.suffix.lower() == ".safetensors":
        obj = _read_safetensors(p)
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"checkpoint {str(p)!r} cannot be read safely: {first}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {str(p)!r} does not hold a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def with_state_dict_prefix(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``state`` with the model's declared ``state_dict_prefix`` added to every key, when no key of
    ``state`` is one of the model's own and some key with the prefix is (a library's plain state dict
    for a model that wraps that library's network); else ``state`` unchanged."""
    prefix = getattr(model, "state_dict_prefix", None)
    if not isinstance(prefix, str) or not prefix or not state:
        return state
    own = model.state_dict().keys()
    if any(key in own for key in state) or not any(prefix + key in own for key in state):
        return state
    return {prefix + key: value for key, value in state.items()}


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model``; a mismatch names the first mismatched key. Keys lacking the
    model's ``state_dict_prefix`` get it (:func:`with_state_dict_prefix`)."""
    state = with_state_dict_prefix(model, state)
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise ModelError(f"checkpoint {source} does not fit {type(model).__name__}: missing key {key!r}")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ModelError(
                f"checkpoint {source} does not fit {type(model).__name__}: key {key!r} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(own[key].shape)}"
            )
    for key in state:
        if key not in own:
            raise ModelError(
                f"checkpoint {source} does not fit {type(model).__name__}: unexpected key {key!r}"
            )
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelError(f"checkpoint {source} has NaN or infinite values in {key!r}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (in place) and return it; every key and shape
    must fit (see :func:`load_pretrained` for weights whose classifier has another class count)."""
    load_state_strict(model, read_state_dict(path), source=repr(str(path)))
    return model


@dataclass(frozen=True)
class Pretrained:
    """What :func:`load_pretrained` loaded into a model: from where, and whether the classifier was
    replaced (``head`` its module name, ``checkpoint_classes`` the class count of the weights, the
    new head kept as the model initialised it)."""

    source: str
    head: str | None = None
    checkpoint_classes: int | None = None
    classes: int | None = None

    @property
    def head_replaced(self) -> bool:
        return self.head is not None

    def describe(self) -> str:
        """One line for the lineage: ``weights <source>; head fc replaced (1000 -> 31 classes)``."""
        text = f"weights {self.source}"
        if self.head is not None:
            text += f"; head {self.head} replaced ({self.checkpoint_classes} -> {self.classes} classes)"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "head": self.head,
            "checkpoint_classes": self.checkpoint_classes,
            "classes": self.classes,
        }


#: attribute under which :func:`load_pretrained` records a :class:`Pretrained` on the model
PRETRAINED_ATTR = "compaudit_pretrained"


def classifier_head(model: nn.Module) -> str | None:
    """Name of the module producing the model's outputs: the last ``nn.Linear`` or ``nn.Conv2d`` in
    module order (``fc`` of a ResNet, ``classifier.6`` of VGG-16, ``classifier.1`` of SqueezeNet,
    ``classifier.<last>`` of VGG-6), or None."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            last = name
    return last


def load_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> Pretrained:
    """Load pretrained weights into ``model`` (in place), replacing the classifier when that is the
    only mismatch.

    Every key must be present on both sides and every shape must match, except that the classifier
    (:func:`classifier_head`) may have another number of outputs (ImageNet's 1000 classes, the data
    set's 31): then everything but the classifier is loaded and the classifier keeps the model's
    own initialisation. Any other mismatch is a one-line :class:`~compaudit.errors.ModelError`; a
    mismatch of the first conv's input channels says how to adapt grey images. The result is
    recorded on the model as ``model.compaudit_pretrained`` and returned. Keys lacking the model's
    ``state_dict_prefix`` get it (:func:`with_state_dict_prefix`). BatchNorm's ``num_batches_tracked``
    counters, absent from files saved before PyTorch 0.4.1, count as 0 (as ``load_state_dict``
    treats such files); it only matters for BatchNorm with ``momentum=None``."""
    state = dict(with_state_dict_prefix(model, state))
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    head = classifier_head(model)
    what = type(model).__name__
    replaced: list[str] = []
    for key, value in own.items():
        if key not in state or tuple(state[key].shape) == tuple(value.shape):
            continue
        ours, theirs = tuple(value.shape), tuple(state[key].shape)
        module = key.rpartition(".")[0]
        if head is not None and module == head and ours[1:] == theirs[1:]:
            replaced.append(key)
            continue
        first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        if module == first_conv and len(ours) == 4 and ours[1] != theirs[1]:
            raise ModelError(
                f"checkpoint {source} does not fit {what}: its first conv {module!r} takes {theirs[1]} input "
                f"channel(s), the data has {ours[1]}; for grey images with RGB weights set "
                "model.params.input_adapter: repeat"
            )
        raise ModelError(
            f"checkpoint {source} does not fit {what}: key {key!r} has shape {theirs}, "
            f"the model expects {ours}"
        )
    if replaced:
        load_state_strict(model, {**state, **{k: own[k] for k in replaced}}, source=source)
        weight = state[f"{head}.weight"] if f"{head}.weight" in state else state[replaced[0]]
        info = Pretrained(source, head, int(weight.shape[0]), int(own[replaced[0]].shape[0]))
    else:
        load_state_strict(model, state, source=source)
        info = Pretrained(source)
    setattr(model, PRETRAINED_ATTR, info)
    return info


def pretrained_of(model: nn.Module) -> Pretrained | None:
    """What :func:`load_pretrained` recorded on ``model`` (by a checkpoint or an adapter), if anything."""
    info = getattr(model, PRETRAINED_ATTR, None)
    return info if isinstance(info, Pretrained) else None
