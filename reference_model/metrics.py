"""Evaluation metrics: reconstruction quality, a bimodality test and a latent-factor probe.

Each one is computed by a well-kept library; this module fixes the settings and the reduction
and checks the input:

- :func:`l1_error`, :func:`psnr`, :func:`ssim`: per-image reconstruction quality for images
  in ``[-1, 1]`` (``data_range = 2``). PSNR and SSIM are torchmetrics'. SSIM follows Wang,
  Bovik, Sheikh and Simoncelli (2004): an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``,
  ``K2 = 0.03``, averaged over the *valid* window positions and the channels (torchmetrics'
  own mean also covers the reflection-padded border, which on a 32x32 image is more than half
  of the positions, so its SSIM map is taken and cropped to the valid ones).
- :func:`bimodality_test`: decides, per latent coordinate, whether its histogram has two
  modes (the paper's Fig. 6 claim: 198 of 512 coordinates bimodal): scikit-learn's
  ``GaussianMixture`` for the one- and two-Gaussian fits and their BIC, SciPy's
  ``gaussian_kde`` for the density dip, SciPy's bias-corrected skewness and kurtosis for
  Sarle's coefficient. The rule is stated in :data:`BIMODALITY_RULE` and written into every
  report.
- :func:`probe_factors`: how well the latents predict known generative factors (scikit-learn
  ridge regression R^2 for continuous factors, multinomial logistic regression accuracy for
  discrete ones), fitted on one half and scored on the other.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.stats import gaussian_kde, kurtosis, skew
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from tqdm.auto import tqdm

__all__ = [
    "BIMODALITY_RULE",
    "BimodalityResult",
    "FactorScore",
    "bimodality_test",
    "fit_two_gaussians",
    "l1_error",
    "probe_factors",
    "psnr",
    "sarle_coefficient",
    "ssim",
    "ssim_window_size",
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


def _check_range(data_range: float) -> None:
    if not data_range > 0:
        raise ValueError(f"data_range must be positive; got {data_range}")


def l1_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error per image, :math:`\\frac{1}{CHW}\\sum |x - \\hat x|`.

    Args:
        x, x_hat: ``(B, C, H, W)`` images.

    Returns:
        ``(B,)`` float64.

    Raises:
        ValueError: if the inputs are not two image batches of one shape.
    """
    _check_pair(x, x_hat)
    return (x.double() - x_hat.double()).abs().flatten(1).mean(1)


def psnr(x: Tensor, x_hat: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, :math:`10 \\log_{10}(R^2 / \\mathrm{MSE})` in dB.

    torchmetrics' ``peak_signal_noise_ratio`` over each image's pixels and channels.

    Args:
        x, x_hat: ``(B, C, H, W)`` images.
        data_range: ``R``, the span of the pixel values (2 for ``[-1, 1]``).

    Returns:
        ``(B,)`` float64; ``inf`` for an exact reconstruction.

    Raises:
        ValueError: if the inputs are not two image batches of one shape, or ``data_range``
            is not positive.
    """
    _check_pair(x, x_hat)
    _check_range(data_range)
    return peak_signal_noise_ratio(
        x_hat.double(), x.double(), data_range=data_range, reduction="none", dim=(1, 2, 3)
    )


def ssim_window_size(sigma: float = 1.5) -> int:
    """Side of torchmetrics' Gaussian SSIM window for ``sigma``: ``2 floor(3.5 sigma + 0.5) + 1``.

    11 for the paper's (and Wang et al.'s) sigma of 1.5.

    Raises:
        ValueError: if ``sigma`` is not positive.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    return 2 * int(3.5 * sigma + 0.5) + 1


def ssim(
    x: Tensor,
    x_hat: Tensor,
    data_range: float = 2.0,
    *,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    r"""Structural similarity per image (Wang et al. 2004, eq. 13, Gaussian-window variant).

    .. math::
        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
            {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \quad C_1 = (K_1 R)^2,\ C_2 = (K_2 R)^2

    with local weighted statistics under the normalised Gaussian window, computed by
    torchmetrics' ``structural_similarity_index_measure``, averaged over the valid window
    positions (those that need no padding) and the channels: the mean SSIM of the paper.
    float64 inputs are computed in float64; any other in float32 (14 times faster on CPU, where
    float64 grouped convolutions take a slow path; within 2e-7 of float64 on images in
    ``[-1, 1]``).

    Args:
        x, x_hat: ``(B, C, H, W)`` images, ``H, W >=`` the window side
            (:func:`ssim_window_size`, 11 for sigma 1.5).
        data_range: ``R`` (2 for images in ``[-1, 1]``).
        sigma: the Gaussian window's standard deviation (1.5 in the paper).
        k1, k2: the stabilising constants (0.01 and 0.03).

    Returns:
        ``(B,)`` float64.

    Raises:
        ValueError: on mismatched shapes, a non-positive ``data_range`` or ``sigma``, or
            images smaller than the window.
    """
    _check_pair(x, x_hat)
    _check_range(data_range)
    window_size = ssim_window_size(sigma)
    height, width = x.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(
            f"images must be at least window_size={window_size} pixels on each side (the "
            f"Gaussian window of sigma={sigma}); got {height}x{width}"
        )
    dtype = torch.float64 if torch.float64 in (x.dtype, x_hat.dtype) else torch.float32
    _, ssim_map = structural_similarity_index_measure(
        x_hat.to(dtype),
        x.to(dtype),
        gaussian_kernel=True,
        sigma=sigma,
        data_range=data_range,
        k1=k1,
        k2=k2,
        reduction="none",
        return_full_image=True,
    )
    pad = (window_size - 1) // 2
    valid = ssim_map[..., pad : height - pad, pad : width - pad]
    return valid.double().flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------
# bimodality

BIMODALITY_RULE = (
    "A latent coordinate counts as bimodal when (1) a two-component Gaussian mixture, fitted "
    "by EM (scikit-learn GaussianMixture, two k-means++ starts), has a lower BIC than a single "
    "Gaussian; (2) its components are separated, Ashman's D = sqrt(2) |m1 - m2| / "
    "sqrt(s1^2 + s2^2) > 2, each with weight >= 0.05; and (3) the data show a dip between the "
    "two component means: a Gaussian kernel density estimate (SciPy gaussian_kde, Silverman's "
    "rule-of-thumb bandwidth 0.9 min(sd, IQR/1.349) n^(-1/5)) falls below 0.8 times the lower "
    "of its two flanking maxima. Sarle's bimodality coefficient (> 5/9 suggests bimodality) is "
    "reported beside it."
)

MIN_WEIGHT = 0.05
MIN_ASHMAN_D = 2.0
MAX_DIP_RATIO = 0.8
DIP_GRID_POINTS = 64


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


def _is_degenerate(column: Array) -> bool:
    """Fewer than two distinct values: no mixture, density or moment is defined."""
    return bool(np.ptp(column) <= 1e-12 * max(1.0, float(np.abs(column).max())))


def _gaussian_mixture(column: Array, components: int, seed: int) -> tuple[GaussianMixture, float]:
    """Fit a ``components``-Gaussian mixture to one standardised column.

    Returns the fitted mixture (on the standardised values) and the column's scale.
    """
    scale = float(column.std())
    standardised = ((column - column.mean()) / scale)[:, None]
    mixture = GaussianMixture(
        components,
        init_params="k-means++",
        n_init=2 if components > 1 else 1,
        tol=1e-4,
        max_iter=200,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(standardised)
    return mixture, scale


def _mixture_fit(
    column: Array, components: int, seed: int
) -> tuple[Array, Array, Array, float, float]:
    """``(means, stds, weights, total log-likelihood, BIC)`` in the column's own units.

    The BIC is scikit-learn's (``-2 log L + p log n``, ``p`` = 2 for one Gaussian, 5 for
    two); the density of the raw values is that of the standardised ones divided by the
    scale, so both move by ``n log(scale)`` (times -2 for the BIC).
    """
    mixture, scale = _gaussian_mixture(column, components, seed)
    standardised = ((column - column.mean()) / scale)[:, None]
    means = mixture.means_[:, 0] * scale + column.mean()
    stds = np.sqrt(mixture.covariances_.reshape(components)) * scale
    shift = len(column) * math.log(scale)
    loglik = float(mixture.score(standardised)) * len(column) - shift
    bic = float(mixture.bic(standardised)) + 2 * shift
    return means, stds, np.asarray(mixture.weights_, dtype=np.float64), loglik, bic


def fit_two_gaussians(samples: Any, *, seed: int = 0) -> tuple[Array, Array, Array, Array]:
    """Fit a two-component 1-D Gaussian mixture to every column (scikit-learn, by EM).

    Each column is standardised, fitted by ``GaussianMixture(2)`` from two k-means++ starts
    (seeded; the better one is kept; scikit-learn's ``reg_covar`` of 1e-6 floors each
    component's variance at 1e-6 of the column's), and the fit is mapped back to the column's
    units. A column with fewer than two distinct values gets two identical components of
    zero spread and a NaN log-likelihood.

    Args:
        samples: ``(N, D)`` (or ``(N,)``) values, ``N >= 8``.
        seed: seed of the k-means++ starts.

    Returns:
        ``(means, stds, weights, loglik)``: ``(D, 2)`` each (components sorted by mean) and the
        total log-likelihood ``(D,)`` of the raw values.

    Raises:
        ValueError: on a wrong shape, fewer than 8 samples or non-finite values.
    """
    data = _as_columns(samples)
    dims = data.shape[1]
    means, stds = np.zeros((dims, 2)), np.zeros((dims, 2))
    weights, loglik = np.full((dims, 2), 0.5), np.full(dims, np.nan)
    for d in range(dims):
        column = data[:, d]
        if _is_degenerate(column):
            means[d] = column.mean()
            continue
        m, s, w, ll, _ = _mixture_fit(column, 2, seed)
        order = np.argsort(m)
        means[d], stds[d], weights[d], loglik[d] = m[order], s[order], w[order], ll
    return means, stds, weights, loglik


def sarle_coefficient(samples: Any) -> Array:
    r"""Sarle's bimodality coefficient per column, with the finite-sample corrections.

    .. math:: BC = \frac{g^2 + 1}{k + \frac{3(n-1)^2}{(n-2)(n-3)}}

    with ``g`` the bias-corrected sample skewness and ``k`` the bias-corrected excess kurtosis
    (SciPy's ``skew`` and ``kurtosis`` with ``bias=False``, the SAS definitions). ``1/3`` for a
    normal, ``5/9`` for a uniform, ``1`` for two equal spikes; values above ``5/9`` suggest
    bimodality.

    Args:
        samples: ``(N, D)`` (or ``(N,)``) values, ``N >= 8``.

    Returns:
        ``(D,)``; NaN for a column with fewer than two distinct values.

    Raises:
        ValueError: on a wrong shape, fewer than 8 samples or non-finite values.
    """
    data = _as_columns(samples)
    n = data.shape[0]
    coefficient = np.full(data.shape[1], np.nan)
    usable = np.array([not _is_degenerate(data[:, d]) for d in range(data.shape[1])])
    if usable.any():
        g = skew(data[:, usable], axis=0, bias=False)
        k = kurtosis(data[:, usable], axis=0, fisher=True, bias=False)
        coefficient[usable] = (g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    return coefficient


def _silverman_factor(column: Array) -> float:
    """Silverman's rule of thumb ``0.9 min(sd, IQR/1.349) n^(-1/5)`` over the sample sd.

    SciPy's ``gaussian_kde`` multiplies its ``bw_method`` factor by the sample sd (``ddof=1``).
    """
    std = float(column.std(ddof=1))
    iqr = float(np.subtract(*np.percentile(column, [75, 25])))
    spread = min(std, iqr / 1.349) if iqr > 0 else std
    return 0.9 * spread * len(column) ** (-0.2) / std


def _kde_dip_ratio(column: Array, low: float, high: float) -> float:
    """Depth of the deepest valley of a Gaussian KDE between ``low`` and ``high``.

    The density (SciPy ``gaussian_kde``, :func:`_silverman_factor` bandwidth) is evaluated on
    a grid from ``low`` to ``high``; at every grid point the ratio of the density to the lower
    of the highest densities on its left and on its right is taken, and the minimum over the
    grid is returned. A unimodal density gives exactly 1; a clear dip gives much less.
    """
    density = gaussian_kde(column, bw_method=_silverman_factor(column))(
        np.linspace(low, high, DIP_GRID_POINTS)
    )
    left = np.maximum.accumulate(density)
    right = np.maximum.accumulate(density[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = density / np.minimum(left, right)
    return float(np.nan_to_num(ratio, nan=1.0).min())


def bimodality_test(samples: Any, *, seed: int = 0, progress: bool = False) -> BimodalityResult:
    """Classify every column of ``samples`` as bimodal or not (see :data:`BIMODALITY_RULE`).

    Args:
        samples: ``(N, D)`` array or tensor (``N >= 8``), e.g. sampled latents of a test set;
            a 1-D array is one coordinate.
        seed: seed of the mixture fits' k-means++ starts.
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
    dims = data.shape[1]
    means, stds = np.zeros((dims, 2)), np.zeros((dims, 2))
    weights = np.full((dims, 2), 0.5)
    bic_one, bic_two = np.full(dims, np.nan), np.full(dims, np.nan)
    ashman_d, dip_ratio = np.zeros(dims), np.ones(dims)
    bimodal = np.zeros(dims, dtype=bool)
    for d in tqdm(range(dims), desc="bimodality test", unit="dim", disable=not progress):
        column = data[:, d]
        if _is_degenerate(column):
            means[d] = column.mean()
            continue
        *_, bic_one[d] = _mixture_fit(column, 1, seed)
        m, s, w, _, bic_two[d] = _mixture_fit(column, 2, seed)
        order = np.argsort(m)
        means[d], stds[d], weights[d] = m[order], s[order], w[order]
        ashman_d[d] = (
            math.sqrt(2) * abs(means[d, 1] - means[d, 0]) / math.sqrt(float((stds[d] ** 2).sum()))
        )
        dip_ratio[d] = _kde_dip_ratio(column, means[d, 0], means[d, 1])
        bimodal[d] = (
            bic_two[d] < bic_one[d]
            and ashman_d[d] > MIN_ASHMAN_D
            and weights[d].min() >= MIN_WEIGHT
            and dip_ratio[d] < MAX_DIP_RATIO
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
    training half's statistics (scikit-learn ``StandardScaler``). Continuous factors:
    scikit-learn ``Ridge`` (penalty ``alpha = ridge`` times the number of training samples,
    intercept not penalised), scored by the held-out coefficient of determination
    :math:`R^2 = 1 - \\sum(y - \\hat y)^2 / \\sum(y - \\bar y)^2`. Discrete factors (``kind``
    in :data:`DISCRETE_KINDS`): multinomial ``LogisticRegression`` (L2, ``C = 1 / (ridge
    n_train)``), scored by held-out accuracy against the majority-class baseline.
    Circular factors (named in ``periods``, e.g. a hue with period 1 or a phase with period
    2 pi): the held-out R^2 of the point ``(cos(2 pi y / T), sin(2 pi y / T))`` on the unit
    circle (sums of squares pooled over both coordinates), so the wrap-around is no error.

    Args:
        latents: ``(N, D)`` latent codes (e.g. posterior means).
        factors: ``(N, F)`` factor values.
        names, kinds: ``F`` factor names and kinds.
        train_fraction: share of samples used to fit.
        ridge: penalty per training sample (> 0).
        seed: seed of the split.
        periods: period of each circular factor, by name.

    Returns:
        One :class:`FactorScore` per factor.

    Raises:
        ValueError: on mismatched shapes, names or kinds, a ``train_fraction`` outside
            (0, 1), a non-positive ``ridge`` or period, or too few samples to split.
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
    if not ridge > 0:
        raise ValueError(f"ridge must be positive; got {ridge}")
    order = np.random.default_rng(seed).permutation(x.shape[0])
    cut = round(train_fraction * x.shape[0])
    train, test = order[:cut], order[cut:]
    if len(train) < 2 or len(test) < 2:
        raise ValueError(f"too few samples ({x.shape[0]}) for a train/test split")
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
            majority = np.bincount(labels[train], minlength=len(classes)).argmax()
            baseline = float((labels[test] == majority).mean())
            if len(np.unique(labels[train])) < 2:  # one class seen: predict it
                accuracy = baseline
            else:
                classifier = make_pipeline(
                    StandardScaler(), LogisticRegression(C=1.0 / penalty, max_iter=1000)
                ).fit(x[train], labels[train])
                accuracy = float((classifier.predict(x[test]) == labels[test]).mean())
            scores.append(FactorScore(name, str(kind), "accuracy", accuracy, baseline))
        elif name in periods:
            angle = 2 * np.pi * target / periods[name]
            unit_circle = np.stack([np.cos(angle), np.sin(angle)], axis=1)
            r2 = _held_out_r2(x, unit_circle, train, test, penalty)
            scores.append(FactorScore(name, "circular", "r2", r2, 0.0))
        else:
            r2 = _held_out_r2(x, target, train, test, penalty)
            scores.append(FactorScore(name, str(kind), "r2", r2, 0.0))
    return scores


def _held_out_r2(
    latents: Array,
    target: Array,
    train: NDArray[np.int64],
    test: NDArray[np.int64],
    penalty: float,
) -> float:
    """Fit standardise + ridge on ``train``, return the coefficient of determination on ``test``.

    For a ``(N, K)`` target the sums of squares are pooled over the ``K`` columns
    (scikit-learn's ``variance_weighted`` R^2); a constant held-out target scores 0.
    """
    model = make_pipeline(StandardScaler(), Ridge(alpha=penalty)).fit(latents[train], target[train])
    truth = target[test]
    if float(((truth - truth.mean(axis=0)) ** 2).sum()) == 0:
        return 0.0
    return float(r2_score(truth, model.predict(latents[test]), multioutput="variance_weighted"))
