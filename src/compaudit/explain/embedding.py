"""Feature-space structure: read a layer's features, embed them with t-SNE, and put numbers on how
well they cluster by class.

Seed 000 (``000_a193888e59fb5ab2.txt``, §IV-C1) looks at t-SNE maps of the first fully-connected
layer and reads "more distinct clusters" off them; seed 002 (``002_ac3fedcbc364a839.txt``, §6 and
A.2) embeds the flattened features of the last three layers of its 8-layer CNN on clean and PGD
inputs together. A picture cannot be compared across a dozen variants, so this module turns it into
numbers (:func:`structure_metrics`): the silhouette of the classes (Rousseeuw 1987) in the map and in
the features themselves, the accuracy of a k-nearest-neighbour classifier in both, and the
trustworthiness of the map (Venna & Kaski 2001: how many of a point's neighbours in the map are
intruders from far away in the features).

Three parts:

- :func:`capture` reads the features of named layers with forward hooks, in eval mode and without
  gradients, and leaves the model as it found it (every module's train/eval flag restored, no hook
  left). Layers are named by module (``classifier.1``: its output) or by an alias that works on every
  model of the zoo, whatever compression did to it (see :data:`LAYER_ALIASES`);
- :func:`tsne` embeds features in 2-D with openTSNE, deterministically per seed;
- :func:`structure_metrics` measures the class structure of features and their embedding.

**Linear-like layers.** The aliases are defined by the model's linear layers in the order they run
(found with one forward pass of two samples; a model without one, by its conv classifier head,
see :data:`LAYER_ALIASES`): every :class:`torch.nn.Linear` subclass — plain,
the straight-through fake-quant :class:`~compaudit.compress.fakequant.QuantLinear` of the simulated
k-bit models, PyTorch's QAT ``Linear``/``LinearReLU`` of the int8 surrogate — and PyTorch's int8
``torch.ao.nn.quantized.Linear`` (with its fused ``LinearReLU``). The *input* of a linear layer is
what it multiplies: for a ``QuantLinear`` that quantizes its inputs, the output of its input
quantizer; int8 tensors are dequantized, so the features are the values the int8 kernel sees.

**Which module is hooked.** Every function here hooks and runs the module it is given, so the
caller passes the module whose layers compute: a variant's ``layers``
(:attr:`compaudit.variant.Variant.layers`). A deployed int8 model runs a frozen TorchScript trace
that hooks cannot see; its :class:`~compaudit.variant.Deployment` names its converted FX graph (which
the trace was checked to reproduce exactly) as ``graph``, and that is what ``layers`` returns. So int8
features are read from the model that ships, not from its fake-quant surrogate, and a new runtime
needs no change here: its method's ``deploy`` names the module to hook.

**t-SNE settings** (:func:`tsne`). openTSNE's defaults (perplexity 30 as in seed 002, PCA
initialisation, learning rate N/12 during early exaggeration, 750 iterations) with ``n_jobs=1``:
a single thread gives bit-identical maps for a seed, and on this project's 2-core machines two
threads ran 3-10x *slower* (contention with PyTorch's own threads, which keep spinning after a
forward pass). The negative gradient is Barnes-Hut below :data:`FFT_FROM` (2,000) points and
FFT-interpolated from there on, where one thread of it beats scikit-learn's two-thread Barnes-Hut
(``bench/explain.py``: 0.88 of its time at 5,000 points); the neighbours are exact below 1,000
points and Annoy above (seeded). Features are used as they come, without standardisation, as both
seeds do: t-SNE calibrates a bandwidth per point to the perplexity, so a global scale does not matter, while
standardising every unit would magnify units that barely vary (dead ReLUs, pruned channels).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from compaudit.errors import ProbeError
from compaudit.explain.layers import conv_head
from compaudit.inference import eval_mode, execution_device
from compaudit.progress import progress

#: layer names that work on every model (besides any module name, whose *output* is read):
#:
#: - ``penultimate``: the input of the last linear layer — the features the classifier head is
#:   applied to (after flatten / global pooling / the last hidden FC layer and its ReLU);
#: - ``first_fc``: the output of the first linear layer (seed 000's "first fully-connected layer"),
#:   taken after its ReLU when the module that runs next is an ``nn.ReLU`` (or the layer is a fused
#:   ``LinearReLU``); for models with a single linear layer (ResNets, students) that is the logits;
#: - ``logits``: the output of the last linear layer;
#: - ``last3``: seed 002's "last three hidden layers (layer 6, 7, 8)", expanded into ``last3[1]``,
#:   ``last3[2]``, ``last3[3]``: the last three of the sequence *input of every linear layer, then
#:   the output of the last one*. On the 8-layer CNN (six conv blocks, FC 256, FC 10) that is the
#:   flattened output of conv block 6, the hidden FC layer after its ReLU, and the logits — the
#:   paper's layers 6, 7 and 8. On VGG-6: FC 1024 and FC 512 after their ReLUs, and the logits.
#:   A model with one linear layer has no ``last3[1]`` (it is skipped with a note by the probe).
#:
#: On VGG-16 (and VGG-16-BN) ``first_fc`` is ``classifier.0`` read after its ReLU (``classifier.1``),
#: the 4096 features of seed 000's Fig. 2; ``penultimate`` the input of ``classifier.6``. A model
#: with **no** linear layer but a conv classifier head (SqueezeNet: a 1x1 class conv
#: ``classifier.1``, ReLU, global average pooling ``classifier.3``; see
#: :func:`compaudit.explain.layers.conv_head`, which a second forward pass finds) has that conv as
#: its classifier layer: ``penultimate`` is its input (the last fire module's map, flattened),
#: ``logits`` the pooling's output (the class scores), ``last3`` gives ``last3[2]`` and
#: ``last3[3]``; it has no ``first_fc`` (skipped with a note).
LAYER_ALIASES = ("penultimate", "first_fc", "logits", "last3")

#: how many points t-SNE needs at least
MIN_POINTS = 4

_LAST3 = re.compile(r"^last3\[([123])\]$")


def expand_layers(layers: Sequence[str]) -> list[str]:
    """The layer labels ``layers`` stand for, in order, without repeats (``last3`` becomes
    ``last3[1]``, ``last3[2]``, ``last3[3]``)."""
    out: list[str] = []
    for name in layers:
        for label in [f"last3[{i}]" for i in (1, 2, 3)] if name == "last3" else [name]:
            if label not in out:
                out.append(label)
    return out


def is_alias(label: str) -> bool:
    """Whether ``label`` is an alias (or one of ``last3[i]``) rather than a module name."""
    return label in LAYER_ALIASES or _LAST3.match(label) is not None


# --------------------------------------------------------------------------- locating layers


@dataclass(frozen=True)
class Tap:
    """Where a layer's features are read: the ``input`` or the ``output`` of one module (by its
    qualified name in the hooked model)."""

    module: str
    side: Literal["input", "output"]


@dataclass
class LayerPlan:
    """The layers of one model: ``taps`` (label → where it is read), in request order, and
    ``missing`` (label → why this model has no such layer)."""

    taps: dict[str, Tap] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def is_linear_like(module: nn.Module) -> bool:
    """A fully-connected layer: any ``nn.Linear`` (plain, fake-quant, QAT, fused QAT) or PyTorch's
    int8 ``Linear`` (plain or fused with ReLU)."""
    from torch.ao.nn.quantized import Linear as Int8Linear

    return isinstance(module, nn.Linear | Int8Linear)


def _device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: the device it declares (an int8 model: the CPU), else that of its
    first parameter or buffer, else the CPU."""
    held = next(itertools.chain(model.parameters(), model.buffers()), None)
    return execution_device(model, held.device if held is not None else "cpu")


@dataclass
class _Trace:
    """One forward pass: the modules in the order they started, each one's first end position in
    that order, and how many times each ran."""

    starts: list[str] = field(default_factory=list)
    ended_at: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


def _trace(model: nn.Module, example: Tensor, device: torch.device) -> _Trace:
    trace = _Trace()
    handles: list[RemovableHandle] = []

    def pre(name: str) -> Any:
        def hook(_m: nn.Module, _args: Any) -> None:
            trace.starts.append(name)
            trace.calls[name] = trace.calls.get(name, 0) + 1

        return hook

    def post(name: str) -> Any:
        def hook(_m: nn.Module, _args: Any, _out: Any) -> None:
            trace.ended_at.setdefault(name, len(trace.starts))

        return hook

    try:
        for name, m in model.named_modules():
            if name:
                handles.append(m.register_forward_pre_hook(pre(name)))
                handles.append(m.register_forward_hook(post(name)))
        model(example.to(device))
    finally:
        for h in handles:
            h.remove()
    return trace


def plan_layers(model: nn.Module, layers: Sequence[str], example: Tensor) -> LayerPlan:
    """Where each of ``layers`` (aliases or module names; see :data:`LAYER_ALIASES`) is read in
    ``model``. Runs the model once on ``example`` (a batch of one or two inputs; eval mode, no
    gradients, ``model`` left as it was) to find the order in which its layers run, and once more
    when it has no linear layer, to find a conv classifier head."""
    if len(example) == 0:
        raise ValueError("plan_layers needs an example input")
    target = model
    with eval_mode(model), torch.no_grad():
        trace = _trace(target, example, _device(model))
    modules = dict(target.named_modules())
    linears = [n for n in dict.fromkeys(trace.starts) if is_linear_like(modules[n])]
    plan = LayerPlan()
    what = type(target).__name__
    # the classifier: the last linear layer, else the class conv of a conv classifier head
    classifier: Tap | None = None
    scores: Tap | None = None
    no_fc = f"{what} has no linear layer"
    if linears:
        classifier, scores = Tap(linears[-1], "input"), Tap(linears[-1], "output")
    else:
        with eval_mode(model), torch.no_grad():
            head = conv_head(target, example.to(_device(model)))
        if head is not None:
            classifier, scores = Tap(head[0], "input"), Tap(head[1], "output")
            no_fc = f"{what} has no fully-connected layer (its classifier is the conv {head[0]!r})"
    # the sequence of seed 002's "layers": the input of every linear layer (or of the class conv),
    # then the classifier's scores
    chain = [Tap(n, "input") for n in linears[:-1]] + ([classifier, scores] if classifier and scores else [])
    for label in expand_layers(layers):
        tap: Tap | None = None
        why = no_fc
        if label == "penultimate":
            tap = classifier
        elif label == "logits":
            tap = scores
        elif label == "first_fc" and linears:
            tap = Tap(_after_relu(linears[0], trace, modules), "output")
        elif last3 := _LAST3.match(label):
            pos = len(chain) - 4 + int(last3.group(1))
            if pos >= 0:
                tap = chain[pos]
            elif linears:
                why = f"{what} has {len(linears)} linear layer(s): no {label}"
            elif classifier is not None:
                why = f"{what} has one classifier layer (the conv {classifier.module!r}): no {label}"
        elif not is_alias(label):
            if label and label in modules:
                tap = Tap(label, "output")
            else:
                why = f"{what} has no module {label!r}"
        if tap is None:
            plan.missing[label] = why
            continue
        calls = trace.calls.get(tap.module, 0)
        if calls != 1:
            plan.missing[label] = (
                f"module {tap.module!r} does not run in the forward pass"
                if calls == 0
                else f"module {tap.module!r} runs {calls} times per forward pass (its features are ambiguous)"
            )
            continue
        plan.taps[label] = tap
    return plan


def _after_relu(linear: str, trace: _Trace, modules: dict[str, nn.Module]) -> str:
    """``linear``, or the ReLU module that runs right after it (once per forward pass)."""
    end = trace.ended_at.get(linear)
    if end is not None and end < len(trace.starts):
        nxt = trace.starts[end]
        if isinstance(modules[nxt], nn.ReLU) and trace.calls.get(nxt) == 1:
            return nxt
    return linear


def unknown_layer_message(label: str, model: nn.Module) -> str:
    """One line naming ``label`` and listing the valid names for ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    return (
        f"unknown layer {label!r}: use an alias ({', '.join(LAYER_ALIASES)}, last3[1..3]) or a module of "
        f"{type(model).__name__} ({shown or 'it has none'})"
    )


# --------------------------------------------------------------------------- capturing


def capture(
    model: nn.Module, x: Tensor, layers: Sequence[str], *, batch_size: int = 256
) -> dict[str, Tensor]:
    """Features of ``layers`` on the inputs ``x``: label → (N, D) float32 on the CPU, each layer's
    output (or input, for the aliases) flattened per sample. ``last3`` gives three labels.

    ``model`` runs in eval mode without gradients, on its own device; every module's train/eval
    flag is restored and every hook removed afterwards. A layer ``model`` lacks raises
    :class:`~compaudit.errors.ProbeError` (one line, naming it and listing valid names).
    """
    plan = plan_layers(model, layers, x[:2])
    modules = dict(model.named_modules())
    for label, why in plan.missing.items():
        if not is_alias(label) and label not in modules:
            raise ProbeError(unknown_layer_message(label, model))
        raise ProbeError(f"layer {label!r}: {why}")
    return read_features(model, x, plan, batch_size=batch_size)


def read_features(
    model: nn.Module, x: Tensor, plan: LayerPlan, *, batch_size: int = 256, desc: str = "features"
) -> dict[str, Tensor]:
    """:func:`capture` for the layers of a :class:`LayerPlan` made for ``model`` (its ``missing``
    layers are left out); ``desc`` names the step in progress lines."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    with eval_mode(model), torch.no_grad():
        return _read(model, x, plan.taps, batch_size, desc)


def _as_features(value: Any, label: str) -> Tensor:
    if isinstance(value, tuple | list) and value:
        value = value[0]
    if not isinstance(value, Tensor):
        raise ProbeError(f"layer {label!r} does not produce a tensor (got {type(value).__name__})")
    features: Tensor = value.dequantize() if value.is_quantized else value
    return features.detach().float().flatten(1).cpu()


def _read(model: nn.Module, x: Tensor, taps: dict[str, Tap], batch_size: int, desc: str) -> dict[str, Tensor]:
    target = model
    modules = dict(target.named_modules())
    device = _device(model)
    got: dict[str, list[Tensor]] = {label: [] for label in taps}
    handles: list[RemovableHandle] = []

    def output_hook(label: str) -> Any:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            got[label].append(_as_features(out, label))

        return hook

    def input_hook(label: str) -> Any:
        def hook(_m: nn.Module, args: Any) -> None:
            got[label].append(_as_features(args, label))

        return hook

    try:
        for label, tap in taps.items():
            m = modules[tap.module]
            if tap.side == "output":
                handles.append(m.register_forward_hook(output_hook(label)))
            elif isinstance(quant := getattr(m, "input_quantizer", None), nn.Module) and not isinstance(
                quant, nn.Identity
            ):
                # what the layer multiplies: its input after activation quantization (a fake-quant
                # layer names the module that quantizes its inputs ``input_quantizer``)
                handles.append(quant.register_forward_hook(output_hook(label)))
            else:
                handles.append(m.register_forward_pre_hook(input_hook(label)))
        starts = range(0, len(x), batch_size)
        for start in progress(starts, desc=desc, total=len(starts)):
            target(x[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    return {label: torch.cat(chunks) if chunks else torch.empty(0, 0) for label, chunks in got.items()}


# --------------------------------------------------------------------------- t-SNE and metrics


#: from this many points on, the negative gradient uses openTSNE's FFT-accelerated interpolation
#: (Linderman et al. 2019) instead of Barnes-Hut: on one thread it is faster at this size
#: (5000 points: 10.6 s against 14.4 s; scikit-learn's two-thread Barnes-Hut took 11.2 s)
FFT_FROM = 2000


def tsne(x: NDArray[Any], *, seed: int, perplexity: float = 30.0) -> NDArray[np.float64]:
    """2-D t-SNE map (N, 2) of the rows of ``x`` (flattened per row), deterministic per ``seed``.

    openTSNE with PCA initialisation and one thread (see the module docstring). The perplexity is
    clipped to ``(N - 1) / 3`` so that the ``3 * perplexity`` neighbours it needs exist (openTSNE
    does the same, with a warning). Features with no variance at all (a dead layer) have no
    structure to show: every point maps to the origin. One-dimensional features start from a
    random (seeded) layout, as PCA needs two dimensions.
    """
    from openTSNE import TSNE

    data = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = data.shape[0]
    if n < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {n}")
    if not np.isfinite(data).all():
        raise ValueError("t-SNE input contains NaN or infinite values")
    if perplexity <= 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    if data.shape[1] == 0 or float(np.ptp(data, axis=0).max()) == 0.0:
        return np.zeros((n, 2))
    model = TSNE(
        n_components=2,
        perplexity=min(float(perplexity), (n - 1) / 3),
        initialization="pca" if data.shape[1] >= 2 else "random",
        random_state=seed,
        n_jobs=1,
        negative_gradient_method="fft" if n >= FFT_FROM else "bh",
        verbose=False,
    )
    with _quiet_opentsne():
        embedding = model.fit(data)
    return np.array(embedding, dtype=np.float64)


@contextmanager
def _quiet_opentsne() -> Iterator[None]:
    """openTSNE logs its automatic choices at INFO level; keep them out of compaudit's log."""
    logger = logging.getLogger("openTSNE")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def knn_folds(n_splits: int, seed: int, grouped: bool) -> Any:
    """The cross-validation of :func:`structure_metrics`' k-NN accuracies: stratified, shuffled
    with ``seed``; grouped (a group never split across folds) when ``grouped``."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if grouped:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


#: folds of the k-NN cross-validation
KNN_FOLDS = 5


def structure_metrics(
    features: NDArray[Any],
    embedding: NDArray[Any],
    labels: NDArray[Any],
    *,
    k: int = 5,
    seed: int,
    groups: NDArray[Any] | None = None,
) -> dict[str, float]:
    """How well ``labels`` (N,) cluster in ``features`` (N, D) and their 2-D ``embedding`` (N, 2).

    - ``silhouette`` / ``silhouette_features``: mean silhouette (Rousseeuw 1987) with the classes
      as clusters, Euclidean, in the embedding / the features (-1..1; NaN with fewer than two
      classes or no sample outside them);
    - ``knn_accuracy_embedding`` / ``knn_accuracy_features``: accuracy of a k-nearest-neighbour
      classifier (scikit-learn, Euclidean, uniform votes), out of fold in a stratified
      :data:`KNN_FOLDS`-fold cross-validation shuffled with ``seed`` (one prediction per point;
      the share of correct ones). With ``groups`` (clean and adversarial versions of one image share
      a group) the folds are grouped too, so no point is classified by its own twin;
    - ``trustworthiness`` (Venna & Kaski 2001, scikit-learn's): 1 when the ``k`` nearest
      neighbours of every point in the embedding are among its nearest in the features.

    Where the data are few, the folds are fewer (no more than the largest class has members, or
    groups; no k-NN accuracy, NaN, when no class has two), and ``k`` is lowered to the smallest
    training fold for k-NN and below N/2 for trustworthiness.
    """
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    feats = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    emb = np.asarray(embedding, dtype=np.float64)
    y = np.asarray(labels)
    n = len(y)
    if feats.shape[0] != n or emb.shape != (n, 2):
        raise ValueError(f"shapes differ: features {feats.shape}, embedding {emb.shape}, labels {y.shape}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if n < MIN_POINTS:
        raise ValueError(f"structure metrics need at least {MIN_POINTS} points, got {n}")
    n_classes = len(np.unique(y))
    out: dict[str, float] = {}
    for key, data in (("silhouette", emb), ("silhouette_features", feats)):
        out[key] = float(silhouette_score(data, y)) if 2 <= n_classes <= n - 1 else math.nan
    folds = _folds(y, groups, seed)
    for key, data in (("knn_accuracy_embedding", emb), ("knn_accuracy_features", feats)):
        if not folds:
            out[key] = math.nan
            continue
        k_knn = min(k, *(len(train) for train, _ in folds))
        pred = cross_val_predict(KNeighborsClassifier(n_neighbors=k_knn), data, y, cv=folds)
        out[key] = float(np.mean(pred == y))
    out["trustworthiness"] = float(trustworthiness(feats, emb, n_neighbors=min(k, math.ceil(n / 2) - 1)))
    return out


def _folds(y: NDArray[Any], groups: NDArray[Any] | None, seed: int) -> list[tuple[Any, Any]]:
    """The (train, test) index pairs of the k-NN cross-validation: :data:`KNN_FOLDS` folds, fewer
    when no class has that many members (groups); none when no class has two."""
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    largest = max(len(np.unique(g[y == c])) for c in np.unique(y))
    splits = min(KNN_FOLDS, largest, len(np.unique(g)))
    if splits < 2:
        return []
    with warnings.catch_warnings():
        # classes smaller than the number of folds: their stratification is approximate
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        return list(knn_folds(splits, seed, groups is not None).split(np.zeros(len(y)), y, groups))


def knn_transfer_accuracy(
    train: NDArray[Any],
    train_labels: NDArray[Any],
    test: NDArray[Any],
    test_labels: NDArray[Any],
    *,
    k: int = 5,
) -> float:
    """Accuracy on ``test`` of a k-NN classifier fitted on ``train`` (Euclidean, uniform votes):
    with clean features as ``train`` and the adversarial versions of the same images as ``test``,
    the share of adversarial points still surrounded by their own class."""
    from sklearn.neighbors import KNeighborsClassifier

    a = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    b = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    knn = KNeighborsClassifier(n_neighbors=max(1, min(k, len(a)))).fit(a, np.asarray(train_labels))
    return float(knn.score(b, np.asarray(test_labels)))
