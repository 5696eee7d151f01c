"""Models from the libraries people use: ``torchvision:<name>``, ``timm:<name>``, ``hf:<id or folder>``.

A model name with one of these reserved prefixes is built by the library and adapted to compaudit's
factory contract (``in_channels``, ``num_classes``, ``input_size``); the prefixes win over the
``package.module:function`` form of a user factory (:func:`compaudit.models.resolve_factory`).

- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None, num_classes=...)``.
  Param ``weights``: a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1`` ...) whose file must
  already be in torch's hub cache (``torch.hub.get_dir()/checkpoints``). ``vit_*`` get
  ``image_size``, ``maxvit_*`` ``input_size`` from the data; a data set with other than 3 channels
  (and no ``input_adapter: repeat``) gets a first conv of that many input channels.
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``
  (models of a fixed input size also get ``img_size``). Param ``weights``: a local file
  (``.pth``/``.bin``/``.safetensors``) or ``pretrained``: timm's own weights, taken from the Hugging
  Face cache only (``HF_HUB_OFFLINE=1`` for the duration of the call).
- ``hf:<model id or folder>``: a transformers image classifier,
  ``AutoModelForImageClassification.from_pretrained(path, local_files_only=True, num_labels=...,
  ignore_mismatched_sizes=True)``, whose ``forward(x)`` returns the logits tensor.

Other params of ``torchvision:`` and ``timm:`` go to the library's builder unchanged (``dropout``,
``drop_rate`` ...). compaudit never downloads: weights missing from the local caches are a one-line
:class:`~compaudit.errors.ModelError` saying where they were looked for.

The library's network sits in a :class:`LibraryModel` as ``model``, behind ``normalize``
(:class:`~compaudit.models.normalize.Normalize`, whose buffers are outside the ``state_dict``), so
the wrapper's keys are the library's with the prefix ``model.``; the class declares it as
``state_dict_prefix`` and the checkpoint loaders of :mod:`compaudit.models.weights` add it to a plain
library state dict. Pretrained weights load through :func:`~compaudit.models.load_pretrained`: the
classifier is replaced when only the class count differs, and the result is recorded on the model.

Nothing here imports torchvision, timm or transformers until such a model is built.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from compaudit.errors import ModelError
from compaudit.models._common import check_io
from compaudit.models.hub import check_digest
from compaudit.models.normalize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputAdapter,
    Normalize,
    NormalizeName,
    input_layer,
)
from compaudit.models.weights import (
    PRETRAINED_ATTR,
    Pretrained,
    classifier_head,
    load_pretrained,
    read_state_dict,
)

#: reserved prefix -> (the library's import name, the pip extra of compaudit that installs it)
LIBRARIES: dict[str, tuple[str, str]] = {
    "torchvision": ("torchvision", "vision"),
    "timm": ("timm", "timm"),
    "hf": ("transformers", "hf"),
}

HFNormalize = Literal["auto", "imagenet", "none"]


class LibraryModel(nn.Module):
    """A library's classifier behind compaudit's input layer: ``normalize`` → ``model`` → logits.

    ``model`` is the library's module unchanged; an output that is not a tensor (an output object
    with ``logits``, torchvision's ``InceptionOutputs``) is reduced to its logits tensor."""

    #: what this wrapper adds in front of the library's ``state_dict`` keys
    state_dict_prefix = "model."

    def __init__(self, model: nn.Module, normalize: Normalize, *, source: str) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model
        #: the compaudit model name it was built from (``timm:resnet18``)
        self.source = source

    def forward(self, x: Tensor) -> Tensor:
        return _logits(self.model(self.normalize(x)), self.source)

    def extra_repr(self) -> str:
        return f"source={self.source!r}"


class HFImageClassifier(LibraryModel):
    """A transformers image classifier: ``model(pixel_values=x).logits``."""

    def forward(self, x: Tensor) -> Tensor:
        return _logits(self.model(pixel_values=self.normalize(x)), self.source)


def _logits(out: Any, source: str) -> Tensor:
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise ModelError(f"model {source!r} returned {type(out).__name__}, not a logits tensor")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _import(prefix: str, label: str, module: str | None = None) -> ModuleType:
    """Import the library of ``prefix`` (or its submodule ``module``); a one-line error naming the
    extra when it is not installed, or what went wrong when it is installed but does not import."""
    library, extra = LIBRARIES[prefix]
    target = module or library
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] == library or exc.name == target:
            raise ModelError(
                f"model {label!r} needs {library}, which is not installed: pip install 'compaudit[{extra}]'"
            ) from None
        raise ModelError(
            f"model {label!r} needs {library}, which failed to import: {_first_line(exc)}"
        ) from None
    except Exception as exc:  # installed, but built for another torch (an operator missing ...)
        raise ModelError(
            f"model {label!r} needs {library}, which failed to import ({_first_line(exc)}); it must be a "
            f"build for torch {torch.__version__}"
        ) from None


def _call(label: str, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its exception turned into a one-line ModelError naming the model."""
    try:
        return fn()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {label!r} cannot be built by {what}: {_first_line(exc)}") from None


def _hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` would keep the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


# ---------------------------------------------------------------- torchvision

#: torchvision builders whose auxiliary classifiers compaudit switches off (it trains on the main
#: logits only), and the modules holding them
_AUX_HEADS = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}

#: DenseNet's published weights still use the old key names ``norm.1`` ...; torchvision renames them
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_key(key: str) -> str:
    match = _DENSENET_OLD_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def _replace_first_conv(model: nn.Module, in_channels: int, label: str) -> None:
    """Give ``model``'s first conv (an RGB one) ``in_channels`` input channels, freshly initialised."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].in_channels == in_channels:
        return
    name, conv = found
    if conv.groups != 1:
        raise ModelError(
            f"model {label!r} cannot take {in_channels}-channel images: its first conv {name!r} is grouped; "
            "set input_adapter: repeat for grey images"
        )
    same: dict[str, Any] = {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
    }
    new = nn.Conv2d(in_channels, conv.out_channels, bias=conv.bias is not None, **same)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _torchvision_weights(tv_models: ModuleType, name: str, weights: str, label: str) -> tuple[Any, Path]:
    """The weights enum member ``weights`` of ``name`` and its file in torch's hub cache."""
    try:
        enum = tv_models.get_model_weights(name)
    except Exception as exc:
        raise ModelError(
            f"model {label!r}: torchvision has no weights for {name!r}: {_first_line(exc)}"
        ) from None
    key = weights.rpartition(".")[2]  # "ResNet50_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"
    try:
        member = enum[key]
    except KeyError:
        choices = ", ".join(["DEFAULT", *(m.name for m in enum)])
        raise ModelError(f"model {label!r} has no weights {weights!r}; choose one of: {choices}") from None
    path = _hub_checkpoint(str(member.url))
    if not path.is_file():
        raise ModelError(
            f"model {label!r} weights {member.name}: {path.name} is not in torch's hub cache (looked for "
            f"{str(path)!r}); compaudit never downloads: fetch {member.url} into that folder once, or give "
            "the file as model.checkpoint"
        )
    check_digest(path, f"the published weights of {label!r}")
    return member, path


def build_torchvision(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    weights: str | None = None,
    normalize: NormalizeName = "imagenet",
    input_adapter: InputAdapter = "none",
    **kwargs: Any,
) -> LibraryModel:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)`` behind
    the input layer; ``weights`` (a torchvision weights name) loaded from torch's hub cache."""
    label = f"torchvision:{name}"
    h, w = check_io(in_channels, num_classes, input_size)
    norm, conv_in = input_layer(in_channels, normalize, input_adapter)
    tv_models = _import("torchvision", label, "torchvision.models")
    loaded = None if weights is None else _torchvision_weights(tv_models, name, weights, label)
    kw = dict(kwargs)
    if name.startswith("vit_"):
        if h != w:
            raise ModelError(f"model {label!r} takes square images, the data is {h}x{w}")
        kw.setdefault("image_size", h)
    elif name.startswith("maxvit"):
        kw.setdefault("input_size", (h, w))
    aux = _AUX_HEADS.get(name, ())
    if aux:
        kw.setdefault("aux_logits", False)
        if loaded is not None:  # as torchvision builds these for their weights
            kw.setdefault("transform_input", True)
            kw.setdefault("init_weights", False)
    net = _call(
        label,
        "torchvision",
        lambda: tv_models.get_model(name, weights=None, num_classes=num_classes, **kw),
    )
    if not isinstance(net, nn.Module):
        raise ModelError(f"model {label!r}: torchvision returned {type(net).__name__}, not a torch.nn.Module")
    _replace_first_conv(net, conv_in, label)
    model = LibraryModel(net, norm, source=label)
    if loaded is not None:
        member, path = loaded
        state = read_state_dict(path)
        if name.startswith("densenet"):
            state = {_densenet_key(k): v for k, v in state.items()}
        if not kw.get("aux_logits"):
            state = {k: v for k, v in state.items() if k.split(".")[0] not in aux}
        load_pretrained(model, state, source=f"torchvision {name} {member.name} ({path.name})")
    return model


# ---------------------------------------------------------------- timm


@contextlib.contextmanager
def hf_hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the ``with`` block, restored afterwards; huggingface_hub reads the
    variable when imported, so its module-level flag is set (and restored) too."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: ModuleType | None
    try:
        constants = importlib.import_module("huggingface_hub.constants")
    except ImportError:
        constants = None
    old_flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010
    try:
        yield
    finally:
        if constants is not None:
            setattr(constants, "HF_HUB_OFFLINE", old_flag)  # noqa: B010
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _timm_pretrained_state(
    timm: ModuleType, name: str, cfg: Mapping[str, Any], kw: Mapping[str, Any], label: str
) -> tuple[dict[str, Tensor], str]:
    """timm's own pretrained weights of ``name`` from the local caches only, and where they came from."""
    hub_id = cfg.get("hf_hub_id")
    has_hub = importlib.util.find_spec("huggingface_hub") is not None
    if cfg.get("state_dict") is None and cfg.get("file") is None and not (hub_id and has_hub):
        url = cfg.get("url")
        if not url:
            raise ModelError(f"model {label!r}: timm has no pretrained weights for {name!r}")
        path = _hub_checkpoint(str(url))
        if not path.is_file():  # timm would fetch it with torch.hub: look first
            raise ModelError(
                f"model {label!r} pretrained weights: {path.name} is not in torch's hub cache (looked for "
                f"{str(path)!r}); compaudit never downloads: fetch {url} into that folder once, or give "
                "weights: <file>"
            )
    where = f"Hugging Face hub {hub_id}" if hub_id and has_hub else "timm's cache"
    try:
        with hf_hub_offline():
            src = timm.create_model(name, pretrained=True, **kw)
    except Exception as exc:
        raise ModelError(
            f"model {label!r} pretrained weights ({where}) are not in the local cache: {_first_line(exc)}; "
            "compaudit never downloads: fetch them once yourself, or give weights: <file>"
        ) from None
    return {k: v.detach() for k, v in src.state_dict().items()}, f"timm {name} pretrained ({where})"


def build_timm(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    weights: str | None = None,
    normalize: NormalizeName = "imagenet",
    input_adapter: InputAdapter = "none",
    **kwargs: Any,
) -> LibraryModel:
    """``timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=...)`` behind the
    input layer (the model's ``pretrained_cfg`` mean and std for ``normalize: imagenet`` when it has
    them); ``weights``: a local file, or ``pretrained`` from the Hugging Face cache."""
    label = f"timm:{name}"
    h, w = check_io(in_channels, num_classes, input_size)
    norm, conv_in = input_layer(in_channels, normalize, input_adapter)
    timm = _import("timm", label)
    kw: dict[str, Any] = {"in_chans": conv_in, **kwargs}

    def create() -> Any:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)

    net = _call(label, "timm", create)
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    cfg_size = cfg.get("input_size")
    if cfg.get("fixed_input_size") and "img_size" not in kw and cfg_size and tuple(cfg_size[-2:]) != (h, w):
        kw["img_size"] = (h, w)  # a ViT-like model: its position embedding is sized from the images
        net = _call(label, "timm", create)
    if not isinstance(net, nn.Module):
        raise ModelError(f"model {label!r}: timm returned {type(net).__name__}, not a torch.nn.Module")
    mean = tuple(float(v) for v in cfg.get("mean") or ())
    std = tuple(float(v) for v in cfg.get("std") or ())
    own_stats = len(mean) == len(std) == conv_in and (mean, std) != (IMAGENET_MEAN, IMAGENET_STD)
    if normalize == "imagenet" and own_stats:  # the model's pretrained_cfg: what its weights expect
        norm = Normalize(mean, std, repeat_to=norm.repeat_to)
    model = LibraryModel(net, norm, source=label)
    if weights is not None:
        if weights == "pretrained":
            state, source = _timm_pretrained_state(timm, name, cfg, kw, label)
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelError(
                    f"model {label!r} weights {weights!r}: no such file (give a local .pth/.bin/.safetensors "
                    "file, or 'pretrained' for timm's weights from the Hugging Face cache)"
                )
            state, source = read_state_dict(path), repr(str(path))
        load_pretrained(model, state, source=source)
    return model


# ---------------------------------------------------------------- transformers


def _hf_local(path: str) -> Path | None:
    """``path`` as a local folder, None for a Hugging Face model id; a path that names no folder is
    an error."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ModelError(
            f"model 'hf:{path}': {str(p)!r} is not a folder (give the folder save_pretrained wrote)"
        )
    looks_local = p.is_absolute() or path.startswith(("./", "../", "~", ".\\", "..\\")) or p.exists()
    if looks_local:
        raise ModelError(f"model 'hf:{path}': folder {str(p)!r} does not exist")
    return None


def _preprocessor_config(path: str, folder: Path | None) -> dict[str, Any] | None:
    """The ``preprocessor_config.json`` of a folder or of a model id in the Hugging Face cache, as plain
    JSON (no processor class is instantiated), or None."""
    file: Path | None = None
    if folder is not None:
        file = folder / "preprocessor_config.json"
    else:
        try:
            hub = importlib.import_module("huggingface_hub")
            found = hub.try_to_load_from_cache(path, "preprocessor_config.json")
        except Exception:
            found = None
        file = Path(found) if isinstance(found, str) else None
    if file is None or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model 'hf:{path}': {str(file)!r} is not valid JSON: {_first_line(exc)}") from None
    return data if isinstance(data, dict) else None


def _per_channel(value: Any, channels: int, what: str, label: str) -> tuple[float, ...]:
    values = [value] * channels if isinstance(value, int | float) else list(value)
    if len(values) != channels or not all(isinstance(v, int | float) for v in values):
        raise ModelError(
            f"model {label!r}: preprocessor_config.json {what} {value!r} does not fit {channels} channels"
        )
    return tuple(float(v) for v in values)


def _hf_normalize(
    label: str,
    prep: Mapping[str, Any] | None,
    normalize: HFNormalize,
    in_channels: int,
    conv_in: int,
    repeat_to: int | None,
) -> Normalize:
    if normalize == "none":
        return Normalize(repeat_to=repeat_to)
    if normalize == "imagenet":
        if conv_in != 3:
            raise ModelError(
                f"model {label!r}: normalize 'imagenet' needs 3-channel (RGB) inputs, the data has "
                f"{in_channels}"
            )
        return Normalize(IMAGENET_MEAN, IMAGENET_STD, repeat_to=repeat_to)
    if prep is None or prep.get("do_normalize") is False or not {"image_mean", "image_std"} <= set(prep):
        return Normalize(repeat_to=repeat_to)
    mean = _per_channel(prep["image_mean"], conv_in, "image_mean", label)
    std = _per_channel(prep["image_std"], conv_in, "image_std", label)
    try:
        return Normalize(mean, std, repeat_to=repeat_to)
    except ValueError as exc:
        raise ModelError(f"model {label!r}: preprocessor_config.json: {exc}") from None


@contextlib.contextmanager
def _quiet_transformers(transformers: ModuleType) -> Iterator[None]:
    """transformers' warnings and progress bars off for the ``with`` block (the head replacement it
    reports is recorded on the model instead), restored afterwards."""
    logging = getattr(getattr(transformers, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.get_verbosity()
    bar = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def _image_size(config: Any) -> tuple[int, int] | None:
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    return None


def _fits(model: nn.Module, shape: tuple[int, int, int, int]) -> BaseException | None:
    """The exception one forward pass on zeros of ``shape`` raises, or None (eval mode, no gradients;
    the mode is restored)."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except Exception as exc:
        return exc
    finally:
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
    return None


def build_hf(
    path: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    normalize: HFNormalize = "auto",
    input_adapter: InputAdapter = "none",
) -> HFImageClassifier:
    """A transformers image classifier from a local folder or the Hugging Face cache (never the
    network), with ``num_classes`` outputs; ``normalize: auto`` takes ``image_mean``/``image_std`` from
    ``preprocessor_config.json`` (none without it), ``imagenet`` ImageNet's, ``none`` nothing."""
    label = f"hf:{path}"
    h, w = check_io(in_channels, num_classes, input_size)
    if normalize not in ("auto", "imagenet", "none"):
        raise ModelError(
            f"model {label!r}: normalize must be 'auto', 'imagenet' or 'none', got {normalize!r}"
        )
    try:
        _, conv_in = input_layer(in_channels, "none", input_adapter)
    except ValueError as exc:
        raise ModelError(f"model {label!r}: {exc}") from None
    repeat_to = 3 if input_adapter == "repeat" else None
    folder = _hf_local(path)
    transformers = _import("hf", label)
    where = str(folder) if folder is not None else path
    try:
        with hf_hub_offline():
            config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
    except Exception as exc:
        place = f"folder {str(folder)!r}" if folder is not None else "the Hugging Face cache"
        raise ModelError(
            f"model {label!r} cannot be read from {place} ({_first_line(exc)}); compaudit never downloads: "
            "fetch it once yourself or give a local folder"
        ) from None
    channels = getattr(config, "num_channels", None)
    if isinstance(channels, int) and channels != conv_in:
        hint = "; set input_adapter: repeat for grey images" if in_channels == 1 and channels == 3 else ""
        raise ModelError(
            f"model {label!r} takes {channels}-channel images (config num_channels), the data has "
            f"{in_channels}{hint}"
        )
    checkpoint_classes = int(getattr(config, "num_labels", num_classes))
    with _quiet_transformers(transformers), hf_hub_offline():
        net = _call(
            label,
            "transformers",
            lambda: transformers.AutoModelForImageClassification.from_pretrained(
                where, local_files_only=True, num_labels=num_classes, ignore_mismatched_sizes=True
            ),
        )
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model {label!r}: transformers returned {type(net).__name__}, not a torch.nn.Module"
        )
    prep = _preprocessor_config(path, folder)
    norm = _hf_normalize(label, prep, normalize, in_channels, conv_in, repeat_to)
    model = HFImageClassifier(net, norm, source=label)
    model.train()  # as every factory's model; from_pretrained leaves eval mode
    size = _image_size(config)
    if size is not None and size != (h, w):
        failure = _fits(model, (1, in_channels, h, w))
        if failure is not None:
            raise ModelError(
                f"model {label!r} takes {size[0]}x{size[1]} images (config image_size), the data is {h}x{w}: "
                f"{_first_line(failure)}"
            )
    if checkpoint_classes != num_classes:
        info = Pretrained(f"hf {path}", classifier_head(model), checkpoint_classes, num_classes)
    else:
        info = Pretrained(f"hf {path}")
    setattr(model, PRETRAINED_ATTR, info)
    return model


# ---------------------------------------------------------------- the factories


def _factory_for(prefix: str, name: str) -> Callable[..., nn.Module]:
    """``build_<library>`` with the model name bound: a factory with compaudit's signature (what
    :func:`~compaudit.models.build_model` inspects to check parameters)."""
    builders: dict[str, Callable[..., nn.Module]] = {
        "torchvision": build_torchvision,
        "timm": build_timm,
        "hf": build_hf,
    }
    build = builders[prefix]
    factory = functools.partial(build, name)
    functools.update_wrapper(factory, build)
    return factory


def adapter_factory(name: str) -> Callable[..., nn.Module] | None:
    """The factory of a model name with a reserved prefix (``torchvision:``, ``timm:``, ``hf:``), or
    None for any other name. Imports nothing of the library: that happens when the model is built."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in LIBRARIES:
        return None
    if not rest.strip():
        what = "a model id or folder" if prefix == "hf" else f"a {LIBRARIES[prefix][0]} model"
        raise ModelError(f"model {name!r} names no model: write {prefix}:<{what}>")
    fn = _factory_for(prefix, rest.strip())
    fn.__name__ = fn.__qualname__ = name
    return fn


def missing(name: str) -> str | None:
    """For a name with a reserved prefix: None when its library can be found (nothing is imported),
    else one line naming the extra to install. None for any other name."""
    prefix, sep, _ = name.partition(":")
    if not sep or prefix not in LIBRARIES:
        return None
    library, extra = LIBRARIES[prefix]
    try:
        found = importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"model {name!r} needs {library}, which is not installed: pip install 'compaudit[{extra}]'"
