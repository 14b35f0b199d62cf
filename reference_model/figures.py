"""The paper's section-4 figures, as tensors (for tests) and as labelled PNG files.

Every builder takes any model with ``encode(x) -> (mu, logvar)`` and ``decode(z) -> x_hat``
(images in ``[-1, 1]``) and returns a grid tensor ``(rows, cols, C, H, W)``; the ``save_*``
functions render them with matplotlib (Agg backend, no display needed).

- :func:`reconstruction_grid`: originals above their reconstructions.
- :func:`prior_samples`: images decoded from ``z ~ N(0, I)``.
- :func:`variation_grid` (Fig. 4): two latent coordinates set to ``mu + k sigma``.
- :func:`transition_grid` (Fig. 5): ``z_k = (1 - a_k) z_1 + a_k z_2``, ``a_k = k / (n - 1)``.
- :func:`save_joint_histogram` (Fig. 6): joint and marginal histograms of two coordinates.
- :func:`save_collapse_histograms`: per-dim KL and per-dim posterior sigma.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = [
    "FIG4_STEPS",
    "Autoencoder",
    "prior_samples",
    "reconstruction_grid",
    "save_collapse_histograms",
    "save_image_grid",
    "save_joint_histogram",
    "save_latent_histograms",
    "tile",
    "transition_grid",
    "variation_grid",
]

FIG4_STEPS: tuple[float, ...] = (-20.0, -10.0, 0.0, 10.0, 20.0)
"""The multiples of sigma of Fig. 4."""


class Autoencoder(Protocol):
    """What the figures need from a VAE."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...


def _check_images(name: str, x: Tensor, ndim: int = 4) -> None:
    if not isinstance(x, Tensor) or x.ndim != ndim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a {ndim}-D image tensor; got {shape}")


@torch.no_grad()
def reconstruction_grid(model: Autoencoder, x: Tensor) -> Tensor:
    """Originals (row 0) and their reconstructions from the posterior mean (row 1).

    Shape: ``x`` ``(B, C, H, W)`` -> ``(2, B, C, H, W)``.
    """
    _check_images("x", x)
    mu, _ = model.encode(x)
    return torch.stack([x, model.decode(mu).to(x.dtype)])


@torch.no_grad()
def prior_samples(
    model: Autoencoder,
    latent_dim: int,
    rows: int,
    cols: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Images decoded from ``z ~ N(0, I)``, as a ``(rows, cols, C, H, W)`` grid."""
    if rows < 1 or cols < 1 or latent_dim < 1:
        raise ValueError(
            f"rows, cols and latent_dim must be >= 1; got {rows}, {cols}, {latent_dim}"
        )
    z = torch.randn(rows * cols, latent_dim, generator=generator).to(device)
    images = model.decode(z)
    return images.reshape(rows, cols, *images.shape[1:])


@torch.no_grad()
def variation_grid(
    model: Autoencoder,
    x: Tensor,
    dims: tuple[int, int],
    steps: Sequence[float] = FIG4_STEPS,
) -> Tensor:
    """Fig. 4: decode the posterior mean of one image with coordinates ``i, j`` moved.

    Cell ``(r, c)`` decodes ``z`` with ``z_i = mu_i + steps[c] sigma_i`` (horizontal axis) and
    ``z_j = mu_j + steps[r] sigma_j`` (vertical axis); every other coordinate stays at the
    posterior mean ``mu`` of ``x``, so the centre cell (``k = 0, 0``) is the reconstruction.

    Args:
        model: the VAE.
        x: one image ``(C, H, W)``.
        dims: ``(i, j)``, the horizontal and the vertical coordinate.
        steps: the multiples ``k`` of sigma (Fig. 4: -20, -10, 0, 10, 20).

    Returns:
        ``(len(steps), len(steps), C, H, W)``.
    """
    _check_images("x", x, ndim=3)
    mu, logvar = model.encode(x.unsqueeze(0))
    latent_dim = mu.shape[1]
    i, j = dims
    if not (0 <= i < latent_dim and 0 <= j < latent_dim) or i == j:
        raise ValueError(f"dims must be two different indices below {latent_dim}; got {dims}")
    if len(steps) < 1:
        raise ValueError("steps must not be empty")
    sigma = (0.5 * logvar).exp()
    k = torch.as_tensor(list(steps), dtype=mu.dtype, device=mu.device)
    n = len(steps)
    z = mu.repeat(n * n, 1)
    z[:, i] = mu[0, i] + k.repeat(n) * sigma[0, i]  # column index varies fastest
    z[:, j] = mu[0, j] + k.repeat_interleave(n) * sigma[0, j]
    images = model.decode(z)
    return images.reshape(n, n, *images.shape[1:])


@torch.no_grad()
def transition_grid(model: Autoencoder, x1: Tensor, x2: Tensor, steps: int = 6) -> Tensor:
    """Fig. 5: decode ``z_k = (1 - a_k) z_1 + a_k z_2``, ``a_k = k / (n - 1)``, ``k = 0..n-1``.

    ``z_1, z_2`` are the posterior means of the paired images. Row ``p`` is pair ``p``.

    Shape: ``x1``, ``x2`` ``(P, C, H, W)`` -> ``(P, steps, C, H, W)``.
    """
    _check_images("x1", x1)
    _check_images("x2", x2)
    if x1.shape != x2.shape:
        raise ValueError(f"x2 must have the shape of x1 {tuple(x1.shape)}; got {tuple(x2.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2; got {steps}")
    z1, _ = model.encode(x1)
    z2, _ = model.encode(x2)
    alpha = torch.arange(steps, dtype=z1.dtype, device=z1.device) / (steps - 1)
    z = (1 - alpha)[None, :, None] * z1[:, None, :] + alpha[None, :, None] * z2[:, None, :]
    images = model.decode(z.reshape(-1, z1.shape[1]))
    return images.reshape(x1.shape[0], steps, *images.shape[1:])


def tile(grid: Tensor, pad: int = 2) -> NDArray[np.uint8]:
    """Lay a ``(rows, cols, C, H, W)`` grid of ``[-1, 1]`` images out as one RGB uint8 array.

    Returns:
        ``(rows (H + pad) + pad, cols (W + pad) + pad, 3)``, white padding.
    """
    _check_images("grid", grid, ndim=5)
    rows, cols, channels, height, width = grid.shape
    if channels not in (1, 3):
        raise ValueError(f"grid images must have 1 or 3 channels; got {channels}")
    images = ((grid.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    images = images.expand(rows, cols, 3, height, width).permute(0, 1, 3, 4, 2).numpy()
    canvas = np.full(
        (rows * (height + pad) + pad, cols * (width + pad) + pad, 3), 255, dtype=np.uint8
    )
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = images[r, c]
    return canvas


def save_image_grid(
    grid: Tensor,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cell_inches: float = 0.9,
) -> NDArray[np.uint8]:
    """Render a ``(rows, cols, C, H, W)`` grid to a PNG with optional axis labels.

    Returns the tiled uint8 array that was drawn (see :func:`tile`).
    """
    canvas = tile(grid)
    rows, cols, _, height, width = grid.shape
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels must have {rows} entries; got {len(row_labels)}")
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"col_labels must have {cols} entries; got {len(col_labels)}")
    figure, axes = plt.subplots(
        figsize=(cols * cell_inches + 1.2, rows * cell_inches + 0.9), dpi=110
    )
    axes.imshow(canvas, interpolation="nearest")
    centres_x = [2 + c * (width + 2) + width / 2 for c in range(cols)]
    centres_y = [2 + r * (height + 2) + height / 2 for r in range(rows)]
    axes.set_xticks(centres_x, list(col_labels) if col_labels is not None else [])
    axes.set_yticks(centres_y, list(row_labels) if row_labels is not None else [])
    axes.tick_params(length=0, labelsize=7)
    for spine in axes.spines.values():
        spine.set_visible(False)
    if xlabel:
        axes.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=8)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return canvas


def save_joint_histogram(
    a: NDArray[np.floating] | Tensor,
    b: NDArray[np.floating] | Tensor,
    path: str | os.PathLike[str],
    *,
    names: tuple[str, str] = ("z_i", "z_j"),
    bins: int = 40,
    title: str | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Fig. 6: the joint histogram of two latent coordinates with both marginal histograms.

    The joint histogram is on the left; the marginal of ``a`` above it and the marginal of
    ``b`` to its right.

    Returns:
        ``(joint, marginal_a, marginal_b)`` counts: ``(bins, bins)``, ``(bins,)``, ``(bins,)``.
    """
    first = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    second = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape or first.size < 2:
        raise ValueError(
            f"a and b must be 1-D with the same length >= 2; got {first.shape} and {second.shape}"
        )
    if bins < 2:
        raise ValueError(f"bins must be >= 2; got {bins}")
    figure = plt.figure(figsize=(5.2, 5.0), dpi=110)
    grid = figure.add_gridspec(
        2, 2, width_ratios=(4, 1.2), height_ratios=(1.2, 4), wspace=0.05, hspace=0.05
    )
    joint_axes = figure.add_subplot(grid[1, 0])
    top = figure.add_subplot(grid[0, 0], sharex=joint_axes)
    right = figure.add_subplot(grid[1, 1], sharey=joint_axes)
    joint, x_edges, y_edges, _ = joint_axes.hist2d(first, second, bins=bins, cmap="viridis")
    marginal_a, _, _ = top.hist(first, bins=x_edges, color="tab:blue")
    marginal_b, _, _ = right.hist(second, bins=y_edges, orientation="horizontal", color="tab:blue")
    joint_axes.set_xlabel(names[0])
    joint_axes.set_ylabel(names[1])
    top.tick_params(labelbottom=False)
    right.tick_params(labelleft=False)
    top.set_ylabel("count", fontsize=7)
    right.set_xlabel("count", fontsize=7)
    if title:
        top.set_title(title, fontsize=9)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return (
        np.asarray(joint, dtype=np.float64),
        np.asarray(marginal_a, dtype=np.float64),
        np.asarray(marginal_b, dtype=np.float64),
    )


def save_collapse_histograms(
    kl_per_dim: NDArray[np.floating] | Tensor,
    sigma_per_dim: NDArray[np.floating] | Tensor,
    path: str | os.PathLike[str],
    *,
    bins: int = 30,
) -> None:
    """Two histograms over latent dims: the standard KL (eq. 10) per dim and the mean sigma."""
    kl = np.asarray(
        kl_per_dim.detach().cpu() if isinstance(kl_per_dim, Tensor) else kl_per_dim, np.float64
    )
    sigma = np.asarray(
        sigma_per_dim.detach().cpu() if isinstance(sigma_per_dim, Tensor) else sigma_per_dim,
        np.float64,
    )
    figure, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.0), dpi=110)
    left.hist(kl, bins=bins, color="tab:orange")
    left.set_xlabel("KL(q(z_j|x) || N(0, 1)), mean over the test split")
    left.set_ylabel("latent dims")
    right.hist(sigma, bins=bins, range=(0.0, max(1.05, float(sigma.max(initial=0.0)) * 1.05)))
    right.set_xlabel("posterior sigma_j, mean over the test split")
    right.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def save_latent_histograms(
    z: NDArray[np.floating],
    dims: Sequence[int],
    bimodal: Sequence[bool],
    path: str | os.PathLike[str],
    *,
    bins: int = 40,
    columns: int = 4,
) -> None:
    """Small multiples: the histogram of ``z[:, d]`` for each ``d`` in ``dims``, titled with
    the dim and whether the bimodality test called it bimodal."""
    values = np.asarray(z, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"z must be (N, D); got shape {values.shape}")
    if len(dims) != len(bimodal) or not dims:
        raise ValueError(
            f"dims and bimodal must be non-empty and of equal length; got {len(dims)} and "
            f"{len(bimodal)}"
        )
    rows = -(-len(dims) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.2 * columns, 1.8 * rows), dpi=110, squeeze=False
    )
    for axis in axes.flat[len(dims) :]:
        axis.set_visible(False)
    for axis, dim, is_bimodal in zip(axes.flat, dims, bimodal, strict=False):
        axis.hist(values[:, dim], bins=bins, color="tab:green" if is_bimodal else "tab:gray")
        axis.set_title(f"z_{dim}" + (" (bimodal)" if is_bimodal else ""), fontsize=8)
        axis.tick_params(labelsize=6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
