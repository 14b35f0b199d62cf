"""Evaluation metrics: reconstruction quality, a bimodality test and a latent-factor probe.

- :func:`l1_error`, :func:`psnr`, :func:`ssim`: per-image reconstruction quality for images
  in ``[-1, 1]`` (``data_range = 2``). SSIM follows Wang, Bovik, Sheikh and Simoncelli (2004):
  an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, statistics over the
  valid window positions, averaged over positions and channels.
- :func:`bimodality_test`: decides, per latent coordinate, whether its histogram has two
  modes (the paper's Fig. 6 claim: 198 of 512 coordinates bimodal). The rule is stated in
  :data:`BIMODALITY_RULE` and written into every report.
- :func:`probe_factors`: how well the latents predict known generative factors (ridge
  regression R^2 for continuous factors, linear one-vs-rest accuracy for discrete ones), fitted
  on one half and scored on the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as torch_f
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "BIMODALITY_RULE",
    "BimodalityResult",
    "FactorScore",
    "bimodality_test",
    "fit_two_gaussians",
    "gaussian_window",
    "l1_error",
    "probe_factors",
    "psnr",
    "sarle_coefficient",
    "ssim",
]

Array = NDArray[np.float64]

# ----------------------------------------------------------------------------------------------
# reconstruction quality


def _check_pair(x: Tensor, x_hat: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(x_hat, Tensor):
        raise ValueError(
            f"x and x_hat must be tensors; got {type(x).__name__} and {type(x_hat).__name__}"
        )
    if x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) image batch; got shape {tuple(x.shape)}")
    if x.shape != x_hat.shape:
        raise ValueError(
            f"x_hat must have the shape of x {tuple(x.shape)}; got {tuple(x_hat.shape)}"
        )


def l1_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error per image, :math:`\\frac{1}{CHW}\\sum |x - \\hat x|`.

    Shape: ``(B, C, H, W)`` twice -> ``(B,)`` float64.
    """
    _check_pair(x, x_hat)
    return (x.double() - x_hat.double()).abs().flatten(1).mean(1)


def psnr(x: Tensor, x_hat: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, :math:`10 \\log_{10}(R^2 / \\mathrm{MSE})` in dB.

    Args:
        x, x_hat: ``(B, C, H, W)`` images.
        data_range: ``R``, the span of the pixel values (2 for ``[-1, 1]``).

    Returns:
        ``(B,)`` float64; ``inf`` for an exact reconstruction.
    """
    _check_pair(x, x_hat)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive; got {data_range}")
    mse = (x.double() - x_hat.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """The normalised 2-D Gaussian window of SSIM, ``(size, size)`` float64, summing to 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer; got {size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    profile = profile / profile.sum()
    return torch.outer(profile, profile)


def ssim(
    x: Tensor,
    x_hat: Tensor,
    data_range: float = 2.0,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    r"""Structural similarity per image (Wang et al. 2004, eq. 13, Gaussian-window variant).

    .. math::
        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
            {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \quad C_1 = (K_1 R)^2,\ C_2 = (K_2 R)^2

    with local weighted statistics under the Gaussian window at every valid position (no
    padding), averaged over positions and channels (the mean SSIM of the paper).

    Args:
        x, x_hat: ``(B, C, H, W)`` images, ``H, W >= window_size``.
        data_range: ``R`` (2 for images in ``[-1, 1]``).
        window_size, sigma: the Gaussian window (11 and 1.5 in the paper).
        k1, k2: the stabilising constants (0.01 and 0.03).

    Returns:
        ``(B,)`` float64.
    """
    _check_pair(x, x_hat)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive; got {data_range}")
    height, width = x.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(
            f"images must be at least window_size={window_size} pixels on each side; "
            f"got {height}x{width}"
        )
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma).to(x.device)
    weight = window.expand(channels, 1, window_size, window_size)

    def local_mean(t: Tensor) -> Tensor:
        return torch_f.conv2d(t, weight, groups=channels)

    a, b = x.double(), x_hat.double()
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov_ab = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * cov_ab + c2) / (var_a + var_b + c2)
    return (luminance * contrast_structure).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------
# bimodality

BIMODALITY_RULE = (
    "A latent coordinate counts as bimodal when (1) a two-component Gaussian mixture, fitted "
    "by EM, has a lower BIC than a single Gaussian; (2) its components are separated, "
    "Ashman's D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) > 2, each with weight >= 0.05; and "
    "(3) the data show a dip between the two component means: a Gaussian kernel density "
    "estimate (Silverman bandwidth) falls below 0.8 times the lower of its two flanking "
    "maxima. Sarle's bimodality coefficient (> 5/9 suggests bimodality) is reported beside it."
)

MIN_WEIGHT = 0.05
MIN_ASHMAN_D = 2.0
MAX_DIP_RATIO = 0.8


@dataclass(frozen=True)
class BimodalityResult:
    """Per-coordinate outcome of :func:`bimodality_test`; every array has shape ``(D,)``
    (``means``, ``stds`` and ``weights`` have ``(D, 2)``, components sorted by mean)."""

    bimodal: NDArray[np.bool_]
    bic_one: Array
    bic_two: Array
    ashman_d: Array
    dip_ratio: Array
    sarle: Array
    means: Array
    stds: Array
    weights: Array

    @property
    def count(self) -> int:
        """How many coordinates are bimodal."""
        return int(self.bimodal.sum())


def _as_columns(samples: Any, name: str = "samples") -> Array:
    array = np.asarray(samples.detach().cpu() if isinstance(samples, Tensor) else samples)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, D); got {array.shape}")
    if array.shape[0] < 8:
        raise ValueError(f"{name} needs at least 8 samples per coordinate; got {array.shape[0]}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; got NaN or inf")
    return array


def _normal_logpdf(x: Array, mean: Array, std: Array) -> Array:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)


def fit_two_gaussians(
    samples: Any, *, iterations: int = 100, tol: float = 1e-9
) -> tuple[Array, Array, Array, Array]:
    """Fit a two-component 1-D Gaussian mixture to every column by EM (vectorised).

    Two deterministic starts (component means at the 25th/75th and the 10th/90th percentiles);
    the one with the higher likelihood is kept. Standard deviations are floored at 1e-3 of the
    column's spread so a component cannot shrink onto one point.

    Args:
        samples: ``(N, D)`` (or ``(N,)``) values.
        iterations: maximum EM iterations.
        tol: stop when the mean log-likelihood improves by less than this.

    Returns:
        ``(means, stds, weights, loglik)``: ``(D, 2)`` each (components sorted by mean) and the
        total log-likelihood ``(D,)``.
    """
    data = _as_columns(samples).T  # (D, N)
    spread = data.std(axis=1, keepdims=True)
    floor = np.maximum(1e-3 * spread, 1e-12)
    best: tuple[Array, Array, Array, Array] | None = None
    for low, high in ((25, 75), (10, 90)):
        means = np.stack(
            [np.percentile(data, low, axis=1), np.percentile(data, high, axis=1)], axis=1
        )
        stds = np.repeat(np.maximum(spread / 2, floor), 2, axis=1)
        weights = np.full_like(means, 0.5)
        previous = np.full(data.shape[0], -np.inf)
        for _ in range(iterations):
            # E step: responsibilities (D, N, 2) via log-sum-exp
            log_joint = np.log(weights)[:, None, :] + _normal_logpdf(
                data[:, :, None], means[:, None, :], stds[:, None, :]
            )
            log_total = np.logaddexp(log_joint[..., 0], log_joint[..., 1])
            resp = np.exp(log_joint - log_total[..., None])
            # M step
            mass = resp.sum(axis=1) + 1e-300
            weights = mass / data.shape[1]
            means = (resp * data[:, :, None]).sum(axis=1) / mass
            variance = (resp * (data[:, :, None] - means[:, None, :]) ** 2).sum(axis=1) / mass
            stds = np.maximum(np.sqrt(variance), floor)
            loglik = log_total.sum(axis=1)
            if np.all(loglik - previous < tol * data.shape[1]):
                break
            previous = loglik
        log_joint = np.log(weights)[:, None, :] + _normal_logpdf(
            data[:, :, None], means[:, None, :], stds[:, None, :]
        )
        loglik = np.logaddexp(log_joint[..., 0], log_joint[..., 1]).sum(axis=1)
        if best is None:
            best = (means, stds, weights, loglik)
        else:
            better = loglik > best[3]
            best = (
                np.where(better[:, None], means, best[0]),
                np.where(better[:, None], stds, best[1]),
                np.where(better[:, None], weights, best[2]),
                np.where(better, loglik, best[3]),
            )
    assert best is not None
    means, stds, weights, loglik = best
    order = np.argsort(means, axis=1)
    take = np.take_along_axis
    return take(means, order, 1), take(stds, order, 1), take(weights, order, 1), loglik


def sarle_coefficient(samples: Any) -> Array:
    r"""Sarle's bimodality coefficient per column, with the finite-sample corrections.

    .. math:: BC = \frac{g^2 + 1}{k + \frac{3(n-1)^2}{(n-2)(n-3)}}

    with ``g`` the bias-corrected sample skewness and ``k`` the bias-corrected excess kurtosis
    (SAS definitions). ``1/3`` for a normal, ``5/9`` for a uniform, ``1`` for two equal spikes;
    values above ``5/9`` suggest bimodality. Returns ``(D,)``.
    """
    data = _as_columns(samples)
    n = data.shape[0]
    centred = data - data.mean(axis=0)
    m2 = (centred**2).mean(axis=0)
    m3 = (centred**3).mean(axis=0)
    m4 = (centred**4).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g1 = m3 / m2**1.5
        g2 = m4 / m2**2 - 3.0
    skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    coefficient = (skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    return np.where(m2 > 0, coefficient, np.nan)


def _kde_dip_ratio(data: Array, means: Array, grid_points: int = 64) -> Array:
    """Depth of the deepest valley of a Gaussian KDE between the two component means.

    ``data`` is ``(D, N)``; for each row the KDE (Silverman bandwidth) is evaluated on a grid
    from ``means[:, 0]`` to ``means[:, 1]``; at every grid point the ratio of the density to the
    lower of the highest densities on its left and on its right is taken, and the minimum over
    the grid is returned. A unimodal density gives exactly 1; a clear dip gives much less.
    """
    n = data.shape[1]
    std = data.std(axis=1, ddof=1)
    iqr = np.subtract(*np.percentile(data, [75, 25], axis=1))
    scale = np.minimum(std, iqr / 1.349)
    scale = np.where(scale > 0, scale, std)
    bandwidth = np.maximum(0.9 * scale * n ** (-0.2), 1e-12)
    fractions = np.linspace(0.0, 1.0, grid_points)
    grid = means[:, :1] + (means[:, 1:] - means[:, :1]) * fractions  # (D, G)
    scaled = (grid[:, :, None] - data[:, None, :]) / bandwidth[:, None, None]
    density = np.exp(-0.5 * scaled**2).mean(axis=2)  # (D, G), constant factor cancels
    left = np.maximum.accumulate(density, axis=1)
    right = np.maximum.accumulate(density[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = density / np.minimum(left, right)
    return np.nan_to_num(ratio, nan=1.0).min(axis=1)


def bimodality_test(samples: Any, *, chunk: int = 16, progress: bool = False) -> BimodalityResult:
    """Classify every column of ``samples`` as bimodal or not (see :data:`BIMODALITY_RULE`).

    Args:
        samples: ``(N, D)`` array or tensor (``N >= 8``), e.g. sampled latents of a test set;
            a 1-D array is one coordinate.
        chunk: columns processed together (bounds the memory: the density estimate holds
            ``chunk * 64 * N`` floats).
        progress: show a tqdm progress bar over the columns.

    Returns:
        A :class:`BimodalityResult`; ``.count`` is the number of bimodal coordinates.

    Raises:
        ValueError: on a wrong shape, fewer than 8 samples or non-finite values.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> two = np.concatenate([rng.normal(-1, 0.3, 200), rng.normal(1, 0.3, 200)])
        >>> bimodality_test(np.stack([two, rng.normal(size=400)], axis=1)).bimodal.tolist()
        [True, False]
    """
    data = _as_columns(samples)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    parts = [
        _bimodality_columns(data[:, start : start + chunk])
        for start in tqdm(
            range(0, data.shape[1], chunk),
            desc="bimodality test",
            unit="chunk",
            disable=not progress,
        )
    ]
    return BimodalityResult(
        **{
            name: np.concatenate([getattr(part, name) for part in parts])
            for name in BimodalityResult.__dataclass_fields__
        }
    )


def _bimodality_columns(data: Array) -> BimodalityResult:
    n = data.shape[0]
    columns = data.T
    variance = columns.var(axis=1)
    safe_std = np.sqrt(np.maximum(variance, 1e-24))
    loglik_one = _normal_logpdf(columns, columns.mean(axis=1, keepdims=True), safe_std[:, None])
    bic_one = -2 * loglik_one.sum(axis=1) + 2 * math.log(n)
    means, stds, weights, loglik_two = fit_two_gaussians(data)
    bic_two = -2 * loglik_two + 5 * math.log(n)
    ashman_d = math.sqrt(2) * np.abs(means[:, 1] - means[:, 0]) / np.sqrt((stds**2).sum(axis=1))
    dip_ratio = _kde_dip_ratio(columns, means)
    bimodal = (
        (variance > 0)
        & (bic_two < bic_one)
        & (ashman_d > MIN_ASHMAN_D)
        & (weights.min(axis=1) >= MIN_WEIGHT)
        & (dip_ratio < MAX_DIP_RATIO)
    )
    return BimodalityResult(
        bimodal=bimodal,
        bic_one=bic_one,
        bic_two=bic_two,
        ashman_d=ashman_d,
        dip_ratio=dip_ratio,
        sarle=sarle_coefficient(data),
        means=means,
        stds=stds,
        weights=weights,
    )


# ----------------------------------------------------------------------------------------------
# factor probe

DISCRETE_KINDS = ("discrete", "categorical", "category", "class", "int", "integer")


@dataclass(frozen=True)
class FactorScore:
    """How well the latents predict one generative factor on the held-out half."""

    name: str
    kind: str
    metric: str
    """``"r2"`` (continuous) or ``"accuracy"`` (discrete)."""
    score: float
    baseline: float
    """What a predictor that ignores the latents gets: 0 for R^2, the majority-class rate."""


def _ridge_fit(features: Array, targets: Array, ridge: float) -> Array:
    gram = features.T @ features
    penalty = ridge * np.eye(gram.shape[0])
    penalty[-1, -1] = 0.0  # do not shrink the intercept
    return np.linalg.solve(gram + penalty, features.T @ targets)


def probe_factors(
    latents: Any,
    factors: Any,
    names: list[str] | tuple[str, ...],
    kinds: list[str] | tuple[str, ...],
    *,
    train_fraction: float = 0.5,
    ridge: float = 1e-2,
    seed: int = 0,
    periods: dict[str, float] | None = None,
) -> list[FactorScore]:
    """Linear probe: predict each generative factor from the latents, score on held-out data.

    The samples are shuffled with ``seed`` and split; latents are standardised with the
    training half's statistics. Continuous factors: ridge regression (penalty ``ridge`` times
    the number of training samples), scored by the held-out coefficient of determination
    :math:`R^2 = 1 - \\sum(y - \\hat y)^2 / \\sum(y - \\bar y)^2`. Discrete factors (``kind``
    in :data:`DISCRETE_KINDS`): one-vs-rest ridge regression on one-hot targets, predicted
    class = argmax, scored by held-out accuracy against the majority-class baseline.
    Circular factors (named in ``periods``, e.g. a hue with period 1 or a phase with period
    2 pi): the held-out R^2 of the point ``(cos(2 pi y / T), sin(2 pi y / T))`` on the unit
    circle (sums of squares pooled over both coordinates), so the wrap-around is no error.

    Args:
        latents: ``(N, D)`` latent codes (e.g. posterior means).
        factors: ``(N, F)`` factor values.
        names, kinds: ``F`` factor names and kinds.
        train_fraction: share of samples used to fit.
        ridge: ridge penalty per training sample.
        seed: seed of the split.
        periods: period of each circular factor, by name.

    Returns:
        One :class:`FactorScore` per factor.
    """
    x = _as_columns(latents, "latents")
    y = np.asarray(factors, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"factors must have one row per latent; got {y.shape[0]} rows for {x.shape[0]} latents"
        )
    if len(names) != y.shape[1] or len(kinds) != y.shape[1]:
        raise ValueError(
            f"names and kinds must have one entry per factor ({y.shape[1]}); "
            f"got {len(names)} names and {len(kinds)} kinds"
        )
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1); got {train_fraction}")
    order = np.random.default_rng(seed).permutation(x.shape[0])
    cut = round(train_fraction * x.shape[0])
    train, test = order[:cut], order[cut:]
    if len(train) < 2 or len(test) < 2:
        raise ValueError(f"too few samples ({x.shape[0]}) for a train/test split")
    centre, scale = x[train].mean(axis=0), x[train].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    standardised = (x - centre) / scale
    features = np.concatenate([standardised, np.ones((x.shape[0], 1))], axis=1)
    penalty = ridge * len(train)
    periods = dict(periods or {})
    for name, period in periods.items():
        if name not in names or period <= 0:
            raise ValueError(
                f"periods must map factor names to positive periods; got {name!r}: {period}"
            )
    scores = []
    for column, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        target = y[:, column]
        if str(kind).lower() in DISCRETE_KINDS:
            classes, labels = np.unique(target, return_inverse=True)
            one_hot = np.eye(len(classes))[labels]
            weights = _ridge_fit(features[train], one_hot[train], penalty)
            predicted = (features[test] @ weights).argmax(axis=1)
            accuracy = float((predicted == labels[test]).mean())
            majority = np.bincount(labels[train], minlength=len(classes)).argmax()
            baseline = float((labels[test] == majority).mean())
            scores.append(FactorScore(name, str(kind), "accuracy", accuracy, baseline))
        elif name in periods:
            angle = 2 * np.pi * target / periods[name]
            unit_circle = np.stack([np.cos(angle), np.sin(angle)], axis=1)
            r2 = _held_out_r2(features, unit_circle, train, test, penalty)
            scores.append(FactorScore(name, "circular", "r2", r2, 0.0))
        else:
            r2 = _held_out_r2(features, target, train, test, penalty)
            scores.append(FactorScore(name, str(kind), "r2", r2, 0.0))
    return scores


def _held_out_r2(
    features: Array,
    target: Array,
    train: NDArray[np.int64],
    test: NDArray[np.int64],
    penalty: float,
) -> float:
    """Fit ridge on ``train``, return the coefficient of determination on ``test``.

    For a ``(N, K)`` target the sums of squares are pooled over the ``K`` columns.
    """
    weights = _ridge_fit(features[train], target[train], penalty)
    residual = target[test] - features[test] @ weights
    total = target[test] - target[test].mean(axis=0)
    denominator = float((total**2).sum())
    return 1.0 - float((residual**2).sum()) / denominator if denominator > 0 else 0.0
