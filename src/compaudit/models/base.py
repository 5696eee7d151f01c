"""Models: one registry of factories, user factories by import path, strict checkpoint loading.

A factory is a callable ``fn(*, in_channels, num_classes, input_size, **params) -> nn.Module``.
``input_size`` is ``(H, W)``; architectures whose classifier depends on it (VGG-6, LeNet-5) size
themselves from it. Users name their own factory as ``package.module:function`` with the same
signature. The prefixes ``torchvision:``, ``timm:`` and ``hf:`` are reserved: they build a model of
that library (:mod:`compaudit.models.adapters`).

A model may declare ``state_dict_prefix`` (a class attribute, e.g. ``"model."`` for a wrapper whose
library network is its ``model``): the loaders here then accept a checkpoint whose keys lack it (the
library's own state dict) and add it before comparing keys.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from compaudit.errors import ModelError
from compaudit.registry import Registry


class ModelFactory(Protocol):
    def __call__(
        self, *, in_channels: int, num_classes: int, input_size: tuple[int, int], **params: Any
    ) -> nn.Module: ...


#: every model factory by name; a module of :mod:`compaudit.models` or a ``compaudit.models`` entry
#: point registers its factories when imported
MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model", error=ModelError, package="compaudit.models", entry_point_group="compaudit.models"
)


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The registered factory ``name``; a library's model ``torchvision:<name>``, ``timm:<name>`` or
    ``hf:<model id or folder>`` (reserved prefixes, see :mod:`compaudit.models.adapters`); or a user
    factory given as ``package.module:function``."""
    if ":" not in name:
        return MODELS.get(name)
    from compaudit.models.adapters import adapter_factory  # imports no library until a model is built

    adapted = adapter_factory(name)
    if adapted is not None:
        return adapted
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import model factory module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ModelError(f"module {module_name!r} has no callable {attr!r} (model factory {name!r})")
    return fn  # type: ignore[no-any-return]


def build_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    params: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs."""
    fn = resolve_factory(name)
    kwargs = dict(params or {})
    sig = inspect.signature(fn)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    if not accepts_any:
        unknown = sorted(set(kwargs) - set(sig.parameters))
        if unknown:
            allowed = sorted(set(sig.parameters) - {"in_channels", "num_classes", "input_size"})
            raise ModelError(
                f"model {name!r} has no parameter {unknown[0]!r}; it accepts: {', '.join(allowed) or 'none'}"
            )
    c, h, w = input_shape
    try:
        model = fn(in_channels=c, num_classes=num_classes, input_size=(h, w), **kwargs)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model {name!r} cannot be built for input {input_shape}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


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
