"""Models: one registry of factories, user factories by import path, library adapters.

A factory is a callable ``fn(*, in_channels, num_classes, input_size, **params) -> nn.Module``.
``input_size`` is ``(H, W)``; architectures whose classifier depends on it (VGG-6, LeNet-5) size
themselves from it. Users name their own factory as ``package.module:function`` with the same
signature. The prefixes ``torchvision:``, ``timm:`` and ``hf:`` are reserved: they build a model of
that library (:mod:`compaudit.models.adapters`).
Loading weights is :mod:`compaudit.models.weights`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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
