"""What a pretraining model predicts: one-step predictions and a fully autoregressive completion.

Images here are model inputs (b, c, h, w), normalised with the data mean/std. Predictions come in
cluster order (clusters 2..K, :meth:`ARMPretrain.predict`); with the ``norm_pix`` target each predicted
patch is per-patch normalised, so it is put back into image space with a mean and a standard deviation
per patch:

* ``stats="gt"``: the true patch's own (the statistics the target hides; two numbers per patch come from
  the image itself, the shape of each patch comes from the model) -- what the one-step pictures use;
* ``stats="context"``: the average patch mean and standard deviation of the clusters already known or
  generated (nothing of the future is used) -- an honest completion.

With the ``pix`` target the prediction is already in image space and ``stats`` is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..models import ARMPretrain

__all__ = ["patch_stats", "one_step_prediction", "autoregressive_completion", "to_pixels", "render_panels",
           "PANEL_PX", "HEADER_PX", "figure_size"]

_EPS = 1e-6
PANEL_PX = 128  # pixels of one panel in the saved PNGs
HEADER_PX = 24  # pixels of the title row above each row of panels
_DPI = 100
PANELS = ("input", "target (per-patch normalised)", "one-step prediction", "autoregressive completion")


def patch_stats(model: ARMPretrain, images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch mean and std (sqrt(unbiased var + 1e-6), as the target), each (b, patches, 1), row-major."""
    t = model.patchify(images.float())
    return t.mean(dim=-1, keepdim=True), (t.var(dim=-1, keepdim=True) + _EPS).sqrt()


def _denorm(model: ARMPretrain, tokens: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return tokens * std + mean if model.norm_pix_loss else tokens


@torch.no_grad()
def one_step_prediction(model: ARMPretrain, images: Tensor) -> tuple[Tensor, Tensor]:
    """(prediction, target) as images (b, c, h, w): every cluster after the first predicted from the true
    earlier ones, put back into image space with the true patch statistics; the first cluster is the input.
    The target image holds the (per-patch normalised, for ``norm_pix``) targets, zeros on the first cluster."""
    images = images.float()
    s = model.geometry.patches_per_cluster
    order = model.cluster_order
    pred, target = model.predict(images)
    mean, std = patch_stats(model, images)
    patches = model.patchify(images)
    out = patches.clone()
    out[:, order[s:]] = _denorm(model, pred.float(), mean[:, order[s:]], std[:, order[s:]])
    tgt = torch.zeros_like(patches)
    tgt[:, order[s:]] = target
    return model.unpatchify(out), model.unpatchify(tgt)


@torch.no_grad()
def autoregressive_completion(model: ARMPretrain, images: Tensor, stats: str = "context",
                              predictor: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Complete ``images`` (b, c, h, w) from their first cluster alone, one cluster at a time.

    The canvas starts as the first cluster and zeros (the data mean) elsewhere; step j runs the model on
    the canvas, takes its prediction of cluster j + 1 (which depends only on clusters 1..j: the model is
    causal), puts it back into image space (``stats``, see the module docstring) and writes it into the
    canvas, which is the next step's input. ``predictor(canvas) -> (b, tokens, patch_dim)`` replaces the
    model's own prediction (tests feed an oracle). Returns the completed canvas (b, c, h, w).
    """
    if stats not in ("gt", "context"):
        raise ValueError(f"stats {stats!r}: expected 'gt' (true patch statistics) or 'context'")
    predictor = predictor or (lambda x: model.forward_decoder(model.forward_encoder(x)))
    images = images.float()
    geo = model.geometry
    s, k = geo.patches_per_cluster, geo.num_clusters
    order = model.cluster_order
    true = model.patchify(images)
    mean, std = patch_stats(model, images)
    canvas = torch.zeros_like(true)
    canvas[:, order[:s]] = true[:, order[:s]]
    for j in range(1, k):
        pred = predictor(model.unpatchify(canvas)).float()[:, (j - 1) * s: j * s]
        where = order[j * s:(j + 1) * s]
        if stats == "gt":
            m, sd = mean[:, where], std[:, where]
        else:
            known = canvas[:, order[:j * s]]
            m = known.mean(dim=-1, keepdim=True).mean(dim=1, keepdim=True)
            sd = (known.var(dim=-1, keepdim=True) + _EPS).sqrt().mean(dim=1, keepdim=True)
        canvas[:, where] = _denorm(model, pred, m, sd)
    return model.unpatchify(canvas)


def to_pixels(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the data normalisation: (b, c, h, w) -> values in [0, 1], clipped."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images.cpu() * s + m).clamp(0, 1)


def _target_pixels(target: Tensor) -> Tensor:
    """Per-patch normalised targets shown as grey levels: -2.5 .. 2.5 -> 0 .. 1."""
    return ((target.cpu() + 2.5) / 5).clamp(0, 1)


def figure_size(rows: int, cols: int = len(PANELS)) -> tuple[int, int]:
    """(width, height) in pixels of a PNG written by :func:`render_panels`."""
    return cols * PANEL_PX, rows * (PANEL_PX + HEADER_PX)


def _first_cluster_box(model: ARMPretrain) -> tuple[float, float, float, float]:
    """(x, y, width, height) in pixels of the first cluster, in image coordinates."""
    gw, p = model.geometry.grid[1], model.geometry.patch_size
    first = model.cluster_order[: model.geometry.patches_per_cluster]
    rows, cols = first // gw, first % gw
    return (cols.min().item() * p - 0.5, rows.min().item() * p - 0.5,
            (cols.max() - cols.min() + 1).item() * p, (rows.max() - rows.min() + 1).item() * p)


def render_panels(model: ARMPretrain, images: Tensor, mean: Sequence[float], std: Sequence[float],
                  path: str | Path, titles: Sequence[str] | None = None, stats: str = "context") -> Path:
    """Write one PNG with a row per image: input | target | one-step prediction | AR completion.

    ``images`` (b, c, h, w) are normalised model inputs; ``mean``/``std`` the data normalisation.
    The first cluster (given, never predicted) is outlined in red. Size: :func:`figure_size`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    pred, target = one_step_prediction(model, images)
    completion = autoregressive_completion(model, images, stats=stats)
    columns = [to_pixels(images, mean, std), _target_pixels(target) if model.norm_pix_loss
               else to_pixels(target, mean, std), to_pixels(pred, mean, std), to_pixels(completion, mean, std)]
    b = images.shape[0]
    w, h = figure_size(b)
    fig = plt.figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
    box = _first_cluster_box(model)
    for i in range(b):
        for j, col in enumerate(columns):
            left, bottom = j / len(columns), 1 - (i + 1) * (PANEL_PX + HEADER_PX) / h
            ax = fig.add_axes((left, bottom, 1 / len(columns), PANEL_PX / h))
            img = col[i].permute(1, 2, 0).numpy()
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, edgecolor="red", linewidth=1))
            ax.set_axis_off()
            label = PANELS[j] if titles is None or j else f"{titles[i]}"
            fig.text(left + 0.5 / len(columns), bottom + (PANEL_PX + HEADER_PX / 2) / h, label, ha="center",
                     va="center", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path
