r"""The math of the ex-post samplers: Gaussian moments, Cholesky factors, sampling, EM.

Pure functions on ``(N, d)`` matrices, used by :class:`mixelbo.GaussianSampler` and
:class:`mixelbo.GaussianMixtureSampler`. Fitting runs in float64. A full-covariance Gaussian
mixture is fitted as :class:`sklearn.mixture.GaussianMixture` fits one
(``covariance_type="full"``): k-means++ seeding (Arthur and Vassilvitskii 2007), optionally
refined by Lloyd's k-means, hard responsibilities, then EM until the mean log-likelihood per
row changes by less than ``tol``; ``reg_covar`` is added to every covariance's diagonal.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from mixelbo._validation import check_floating

Init = Literal["kmeans", "k-means++"]
INITS: tuple[Init, ...] = ("kmeans", "k-means++")
KMEANS_MAX_ITER = 100
"""Lloyd iterations of the ``"kmeans"`` initialisation at most (it stops when no label moves)."""


class MixtureFit(NamedTuple):
    """A fitted full-covariance Gaussian mixture (float64)."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    covariances: Tensor  # (K, d, d)
    scale_tril: Tensor  # (K, d, d), lower Cholesky factors of the covariances
    log_likelihood: float  # mean log-likelihood per row of the fitted data
    converged: bool
    n_iter: int


def check_int(name: str, value: object, minimum: int) -> int:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def check_nonnegative(name: str, value: object) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``>= 0``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_codes(codes: object, minimum: int, why: str) -> Tensor:
    """``codes`` as a float64 ``(N, d)`` matrix, after checking it is one with ``N >= minimum``
    finite rows (``why`` completes the message of too few rows)."""
    check_floating("codes", codes)
    assert isinstance(codes, Tensor)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(
            "codes must have shape (N, d), one row per encoded sample, d >= 1; got shape "
            f"{tuple(codes.shape)} (flatten spatial latents first, e.g. codes.flatten(1))"
        )
    if codes.shape[0] < minimum:
        raise ValueError(
            f"codes must have at least {minimum} rows {why}; got {codes.shape[0]} "
            f"(shape {tuple(codes.shape)})"
        )
    x = codes.detach().double()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(
            f"codes must be finite; got {bad} NaN or infinite values of {x.numel()} "
            f"(shape {tuple(codes.shape)})"
        )
    return x


def check_points(name: str, z: object, dims: int) -> Tensor:
    """``z`` as a float64 ``(M, dims)`` matrix, after checking it is one."""
    check_floating(name, z)
    assert isinstance(z, Tensor)
    if z.ndim != 2 or z.shape[1] != dims:
        raise ValueError(
            f"{name} must have shape (M, {dims}) (the fitted codes' width); got {tuple(z.shape)}"
        )
    return z.double()


def cholesky(covariances: Tensor, reg_covar: float) -> Tensor:
    """Lower Cholesky factors of ``(..., d, d)`` covariances.

    Raises:
        ValueError: If a covariance is not positive definite (suggesting a larger
            ``reg_covar``).
    """
    factor: Tensor
    factor, info = torch.linalg.cholesky_ex(covariances)
    failed = torch.nonzero(info.reshape(-1)).flatten()
    if len(failed):
        raise ValueError(
            f"the covariance of component {int(failed[0])} is not positive definite (codes "
            f"concentrated on a lower-dimensional set); increase reg_covar (got {reg_covar!r})"
        )
    return factor


def weighted_moments(x: Tensor, resp: Tensor, reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""The M step: component masses, means and covariances from responsibilities.

    .. math::
        n_k = \sum_i r_{ik}, \quad m_k = \frac1{n_k} \sum_i r_{ik} x_i, \quad
        \Sigma_k = \frac1{n_k} \sum_i r_{ik} (x_i - m_k)(x_i - m_k)^\top + \epsilon I

    with :math:`\epsilon` = ``reg_covar``. A component without mass (:math:`n_k` floored at
    ``10 * eps``, as scikit-learn does) gets mean 0 and covariance :math:`\epsilon I`.

    Args:
        x: ``(N, d)`` data.
        resp: ``(N, K)`` responsibilities (rows sum to one; all ones for one Gaussian).
        reg_covar: :math:`\epsilon`.

    Returns:
        ``(n (K,), means (K, d), covariances (K, d, d))``.
    """
    mass = resp.sum(0).clamp_min(10 * torch.finfo(resp.dtype).eps)
    means = (resp.T @ x) / mass[:, None]
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    covariances = []
    for k in range(resp.shape[1]):  # (N, d) temporaries, not (N, K, d)
        diff = x - means[k]
        covariances.append((resp[:, k, None] * diff).T @ diff / mass[k] + reg_covar * eye)
    return mass, means, torch.stack(covariances)


def component_log_prob(x: Tensor, means: Tensor, scale_tril: Tensor) -> Tensor:
    r"""Log density of each row under each Gaussian :math:`\mathcal N(m_k, L_k L_k^\top)`.

    .. math::
        \log \mathcal N(x \mid m_k, \Sigma_k) = -\frac12 \left[ d \log 2\pi
            + \lVert L_k^{-1} (x - m_k) \rVert^2 \right] - \sum_j \log (L_k)_{jj}

    Args:
        x: ``(N, d)``.
        means: ``(K, d)``.
        scale_tril: ``(K, d, d)`` lower Cholesky factors.

    Returns:
        ``(N, K)``.
    """
    d = x.shape[1]
    columns = []
    for k in range(means.shape[0]):  # (d, N) temporaries, not (K, d, N)
        white = torch.linalg.solve_triangular(scale_tril[k], (x - means[k]).T, upper=False)
        half_log_det = scale_tril[k].diagonal().log().sum()
        columns.append(-0.5 * (d * math.log(2 * math.pi) + white.square().sum(0)) - half_log_det)
    return torch.stack(columns, dim=1)


def mixture_log_prob(
    x: Tensor, weights: Tensor, means: Tensor, scale_tril: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The E step: :math:`\log p(x_i)` and the log responsibilities of a Gaussian mixture.

    .. math::
        \log p(x_i) = \operatorname{logsumexp}_k
            \left[\log w_k + \log \mathcal N(x_i \mid m_k, \Sigma_k)\right], \qquad
        \log r_{ik} = \log w_k + \log \mathcal N(x_i \mid m_k, \Sigma_k) - \log p(x_i)

    Returns:
        ``(log p (N,), log responsibilities (N, K))``.
    """
    joint = component_log_prob(x, means, scale_tril) + weights.log()
    log_p = torch.logsumexp(joint, dim=1)
    return log_p, joint - log_p[:, None]


def sample_mixture(
    weights: Tensor,
    means: Tensor,
    scale_tril: Tensor,
    n: int,
    generator: torch.Generator | None,
) -> Tensor:
    r"""``n`` draws of a Gaussian mixture: :math:`k \sim \mathrm{Cat}(w)`,
    :math:`z = m_k + L_k \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)`.

    The random numbers are drawn on the generator's device (the parameters' device without
    one) in float64: the component of each row (skipped for one component), then
    :math:`\varepsilon`; the same generator state gives the same draws on any device.

    Args:
        weights: ``(K,)`` mixture weights.
        means: ``(K, d)``.
        scale_tril: ``(K, d, d)`` lower Cholesky factors of the covariances.
        n: Number of draws (``>= 0``).
        generator: The random source.

    Returns:
        ``(n, d)`` float64 draws on the parameters' device.
    """
    device = means.device if generator is None else generator.device
    k, d = means.shape
    means, scale_tril = means.double(), scale_tril.double()
    if n == 0:
        return means.new_zeros(0, d)
    if k == 1:
        eps = torch.randn(n, d, generator=generator, device=device, dtype=torch.float64)
        return means[0] + eps.to(means.device) @ scale_tril[0].T
    probabilities = weights.detach().to(device, torch.float64)
    component = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    eps = torch.randn(n, d, generator=generator, device=device, dtype=torch.float64)
    component, eps = component.to(means.device), eps.to(means.device)
    z = torch.empty(n, d, dtype=torch.float64, device=means.device)
    for j in range(k):
        rows = component == j
        z[rows] = means[j] + eps[rows] @ scale_tril[j].T
    return z


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    r"""k-means++ seeding (Arthur and Vassilvitskii 2007): ``k`` rows of ``x`` as centres.

    The first centre is a uniformly random row; each next one is row :math:`i` with
    probability proportional to :math:`D(x_i)^2`, its squared distance to the nearest centre
    chosen so far (uniformly among all rows once every row is a centre's duplicate).

    Args:
        x: ``(N, d)``, ``N >= k``.
        k: Number of centres.
        generator: A CPU generator (the draws are made on CPU, whatever ``x``'s device).

    Returns:
        ``(k, d)`` centres.
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    nearest = (x - x[first]).square().sum(1)
    for _ in range(1, k):
        weights = nearest.to("cpu", torch.float64)
        if not float(weights.sum()) > 0:
            weights = torch.ones_like(weights)
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (x - x[index]).square().sum(1))
    return x[chosen]


def kmeans_labels(x: Tensor, centres: Tensor, max_iter: int = KMEANS_MAX_ITER) -> Tensor:
    """Lloyd's k-means from ``centres`` until no label changes (at most ``max_iter`` passes);
    a centre that loses all its rows stays where it is. Returns the ``(N,)`` labels."""
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(max_iter):
        counts = torch.bincount(labels, minlength=len(centres)).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        updated = torch.cdist(x, centres).argmin(1)
        if torch.equal(updated, labels):
            break
        labels = updated
    return labels


def fit_gaussian_mixture(
    x: Tensor,
    n_components: int,
    *,
    reg_covar: float,
    max_iter: int,
    tol: float,
    n_init: int,
    init: Init,
    seed: int,
) -> MixtureFit:
    r"""Fit a full-covariance Gaussian mixture to ``x`` by EM; the best of ``n_init`` starts.

    Each start seeds ``n_components`` centres by k-means++ (``init="k-means++"``), refined
    by Lloyd's k-means for ``init="kmeans"``, gives each row to its nearest centre, and
    alternates the E and M steps (:func:`mixture_log_prob`, :func:`weighted_moments`) until
    the mean log-likelihood per row changes by less than ``tol`` (``converged``) or after
    ``max_iter`` steps. The start with the highest final mean log-likelihood wins. All starts
    draw from one CPU generator seeded with ``seed``.

    Args:
        x: ``(N, d)`` float64 data, ``N >= n_components``.
        n_components: :math:`K`.
        reg_covar: Added to every covariance's diagonal.
        max_iter: EM steps per start at most.
        tol: Convergence threshold on the change of the mean log-likelihood.
        n_init: Starts.
        init: ``"kmeans"`` or ``"k-means++"``.
        seed: Seed of the initialisations.

    Returns:
        The fit (its ``log_likelihood`` under the returned parameters).
    """
    generator = torch.Generator().manual_seed(seed)
    best: MixtureFit | None = None
    for _ in range(n_init):
        centres = kmeans_plusplus(x, n_components, generator)
        if init == "kmeans":
            labels = kmeans_labels(x, centres)
        else:
            labels = torch.cdist(x, centres).argmin(1)
        resp = torch.nn.functional.one_hot(labels, n_components).to(x.dtype)
        mass, means, covariances = weighted_moments(x, resp, reg_covar)
        factor = cholesky(covariances, reg_covar)
        weights = mass / mass.sum()
        previous, converged, steps = -math.inf, False, 0
        for steps in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
            log_p, log_resp = mixture_log_prob(x, weights, means, factor)
            mass, means, covariances = weighted_moments(x, log_resp.exp(), reg_covar)
            factor = cholesky(covariances, reg_covar)
            weights = mass / mass.sum()
            current = float(log_p.mean())
            if abs(current - previous) < tol:
                converged = True
                break
            previous = current
        log_likelihood = float(mixture_log_prob(x, weights, means, factor)[0].mean())
        if best is None or log_likelihood > best.log_likelihood:
            best = MixtureFit(weights, means, covariances, factor, log_likelihood, converged, steps)
    assert best is not None
    return best
