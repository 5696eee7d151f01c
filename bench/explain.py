"""How cheap our saliency maps and our t-SNE are: against the raw gradient pass and against the peers.

Prints ``name = value`` lines, each measured in this one run (medians of interleaved runs: every
round times every contender once, in a rotating order, so drifts of the machine hit all alike):

- ``gradcam_cost_ratio``: one batched Grad-CAM map computation through the public
  ``compaudit.explain.explain(model, x, y, method="gradcam")`` (layer resolution on one sample,
  the forward pass, ``autograd.grad`` down to the layer, weighting, ReLU, bilinear upsampling to the
  input size, and all the bookkeeping that leaves the model as it was) / one plain forward pass +
  one backward pass to the **input** (the parameters frozen, so no parameter gradient is computed:
  the cheapest full gradient pass, what every gradient-based saliency method needs at least)
  (target <= 1.2). Ours is cheaper than that limit because its backward pass stops at the layer;
- ``gradcam_vs_captum_ratio``: ``captum.attr.LayerGradCam(relu_attributions=True)`` plus
  ``LayerAttribution.interpolate`` (bilinear) time / ours, the same maps (to 1e-5 in
  ``tests/test_saliency.py``) (target >= 1.0);
- ``tsne_vs_sklearn_ratio``: ``compaudit.explain.embedding.tsne(x, seed=0)`` (openTSNE) time /
  ``sklearn.manifold.TSNE(init="pca", random_state=0, method="barnes_hut")`` time on 5000 points of
  dimension 64 (ten Gaussian clusters, like the features of a trained layer) (target <= 1.0).
  Skipped with a line saying so when ``compaudit.explain.embedding.tsne`` is missing.

Model: CIFAR-style ResNet-18 of width 16 at 3x32x32 with random weights (speed does not depend on
the values), batch 64, 2 threads. Usage:
``python bench/explain.py [--rounds N] [--batch B] [--tsne-rounds N] [--tsne-points P] [--no-tsne]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from compaudit import build_model
from compaudit.explain import explain
from compaudit.explain.layers import conv_layer


def interleaved_s(
    fns: dict[str, Callable[[], object]], rounds: int, *, warmup: bool = True
) -> dict[str, float]:
    """Median seconds per call of each function, timed in rotating order over ``rounds`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    if warmup:
        for fn in fns.values():
            fn()
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items[r % len(items) :] + items[: r % len(items)]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_backward(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """The limit: one forward pass and one backward pass to the input, parameters frozen."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(model(xg).gather(1, y[:, None]).sum(), xg)
    for p, flag in flags:
        p.requires_grad_(flag)


def gradcam_bench(rounds: int, batch: int) -> None:
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, params={"width": 16}).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    layer = conv_layer(model, x[:1]).module

    def captum() -> Tensor:
        attr = LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
        return LayerAttribution.interpolate(attr, (32, 32), interpolate_mode="bilinear")

    t = interleaved_s(
        {
            "limit": lambda: forward_backward(model, x, y),
            "gradcam": lambda: explain(model, x, y, method="gradcam"),
            "captum": captum,
        },
        rounds,
    )
    print(f"gradcam_cost_ratio = {t['gradcam'] / t['limit']:.3f}")
    print(f"gradcam_vs_captum_ratio = {t['captum'] / t['gradcam']:.3f}")
    print(f"gradcam_ms = {1000 * t['gradcam']:.1f}")
    print(f"forward_backward_ms = {1000 * t['limit']:.1f}")
    print(f"captum_gradcam_ms = {1000 * t['captum']:.1f}")


def clusters(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(10, dim))
    return centres[rng.integers(0, 10, size=n)] + rng.normal(size=(n, dim))


def tsne_bench(rounds: int, points: int) -> None:
    try:
        from compaudit.explain.embedding import tsne
    except ImportError as exc:
        print(f"# tsne_vs_sklearn_ratio skipped: compaudit.explain.embedding.tsne is missing ({exc})")
        return
    import openTSNE  # noqa: F401  (imported before timing: the import is not what is measured)
    from sklearn.manifold import TSNE

    x = clusters(points, 64, seed=0)
    t = interleaved_s(
        {
            "ours": lambda: tsne(x, seed=0),
            "sklearn": lambda: TSNE(init="pca", random_state=0, method="barnes_hut").fit_transform(x),
        },
        rounds,
        warmup=False,  # each run is seconds long; imports and caches are the only warm-up effects
    )
    print(f"tsne_vs_sklearn_ratio = {t['ours'] / t['sklearn']:.3f}")
    print(f"tsne_s = {t['ours']:.2f}")
    print(f"tsne_sklearn_s = {t['sklearn']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tsne-rounds", type=int, default=2)
    ap.add_argument("--tsne-points", type=int, default=5000)
    ap.add_argument("--no-tsne", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    gradcam_bench(args.rounds, args.batch)
    if not args.no_tsne:
        tsne_bench(args.tsne_rounds, args.tsne_points)


if __name__ == "__main__":
    main()
