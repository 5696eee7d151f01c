"""Models: one registry of factories, user factories by import path, strict checkpoint loading.

A factory is a callable ``fn(*, in_channels, num_classes, input_size, **params) -> nn.Module``.
``input_size`` is ``(H, W)``; architectures whose classifier depends on it (VGG-6, LeNet-5) size
themselves from it. Users name their own factory as ``package.module:function`` with the same
signature.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
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
    """The registered factory ``name``, or a user factory given as ``package.module:function``."""
    if ":" not in name:
        return MODELS.get(name)
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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``); accepts a bare state dict or one wrapped
    under ``state_dict`` / ``model`` / ``model_state_dict``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"checkpoint file {str(p)!r} does not exist")
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


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model``; a mismatch names the first mismatched key."""
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
    """Load the checkpoint at ``path`` into ``model`` (in place) and return it."""
    load_state_strict(model, read_state_dict(path), source=repr(str(path)))
    return model
