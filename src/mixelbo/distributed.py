r"""KL_G (eq. 19) with the aggregate moments of the *global* batch under data parallelism.

With ``torch.distributed`` each rank sees only its slice of the batch, so eqs. 17-18 computed
locally estimate the aggregate posterior from ``N / world_size`` samples. :func:`synced_mixture_kl`
combines every rank's count, mean and centred second moment (Chan, Golub and LeVeque's parallel
formula) into the moments of the concatenated batch,

.. math::
    N = \sum_r n_r,\qquad \bar\mu = \frac1N \sum_r n_r \bar\mu_r,\qquad
    M_2 = \sum_r \left[M_{2,r} + n_r (\bar x_r - \bar\mu)^2\right],

where :math:`M_{2,r}` is rank :math:`r`'s sum of squared deviations from its own mean
:math:`\bar x_r` (of ``mu`` for ``"means"``/``"mixture"``, of ``z`` for ``"sample"``, whose
deviations are taken about :math:`\bar\mu`); ``"mixture"`` adds :math:`\frac1N\sum_r \sum_i
\sigma^{2}_{ri}`. Ranks may hold different batch sizes. Each rank writes its statistics into
its own row of a ``(world_size, k, d)`` buffer that is summed with the autograd-aware
``torch.distributed.nn.functional.all_reduce`` (one collective; gloo, NCCL and any backend
with ``all_reduce``).

Gradients. Every rank then evaluates the same global loss :math:`L`. The backward of the
all-reduce sums the incoming gradients over ranks, so rank :math:`r` back-propagates
:math:`W\,\partial L/\partial s_r` into its own statistics :math:`s_r` (:math:`W` = world
size), i.e. :math:`W` times its share of :math:`\partial L/\partial\theta`. DDP averages
parameter gradients over ranks, giving :math:`\frac1W \sum_r W\,\partial L/\partial\theta|_r =
\partial L/\partial\theta`: exactly the gradient of the one-process loss on the concatenated
batch (``tests/test_distributed.py`` checks this with two gloo processes).

``covariance="full"`` (:func:`synced_batch_covariance`) combines the ranks' centred
second-moment *matrices* the same way, :math:`M_2 = \sum_r [M_{2,r} + n_r (\bar x_r -
\bar\mu)(\bar x_r - \bar\mu)^\top]`, in float64. Only the per-rank rows need a slot per rank;
:math:`\sum_r M_{2,r}` is a plain sum, so the one all-reduce carries ``world_size x k x d +
d x d`` numbers (not ``world_size x d x d``). The singular-covariance check uses the global
batch size, so ranks may each hold fewer samples than latent dims.

This path runs eager PyTorch ops (the statistics are a few column reductions; the collective
dominates). With one process, or without an initialised process group, it is never taken.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from mixelbo import _full_covariance
from mixelbo import functional as F
from mixelbo._validation import accumulation_dtype, check_option

__all__ = ["is_synced", "synced_batch_covariance", "synced_batch_moments", "synced_mixture_kl"]


def is_synced(sync: bool | object) -> bool:
    """Whether ``sync`` (``True`` or a process group) asks for, and the runtime provides, a
    global batch: ``torch.distributed`` initialised with more than one rank in the group."""
    if sync is False or sync is None:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        return False
    group = None if sync is True else sync
    return bool(dist.get_world_size(group=group) > 1)  # type: ignore[arg-type]


def synced_batch_moments(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: F.Variance = "sample",
    pattern: str | None = None,
    group: object | None = None,
) -> tuple[Tensor, Tensor]:
    r""":func:`mixelbo.functional.batch_moments` over the batch of every rank in ``group``.

    Args:
        mu, logvar, z, variance, pattern: as in :func:`mixelbo.functional.batch_moments`;
            each rank passes its own slice (batch sizes may differ, latent dims may not).
        group: the process group (``None``: the default group).

    Returns:
        ``(mean, var)`` of the concatenated batch, shape ``(dims,)``, identical on every rank
        and differentiable (see the module docstring for the gradient scaling).

    Raises:
        ValueError: as :func:`mixelbo.functional.batch_moments` (checked locally per rank).
    """
    from torch.distributed.nn.functional import all_reduce

    mu_s, logvar_s, z_s = F._moment_samples(mu, logvar, z, variance, pattern)
    count = mu_s.new_full((mu_s.shape[1],), float(mu_s.shape[0]))
    mean_r = mu_s.mean(0)
    if variance == "sample":
        assert z_s is not None
        z_mean_r = z_s.mean(0)
        rows = [count, mean_r, z_mean_r, (z_s - z_mean_r).square().sum(0)]
    else:
        rows = [count, mean_r, mean_r, (mu_s - mean_r).square().sum(0)]
        if variance == "mixture":
            assert logvar_s is not None
            rows.append(logvar_s.exp().sum(0))
    stats = torch.stack(rows)
    world, rank = dist.get_world_size(group), dist.get_rank(group)  # type: ignore[arg-type]
    slots = [stats if r == rank else torch.zeros_like(stats) for r in range(world)]
    reduce_group = group if group is not None else dist.group.WORLD
    with warnings.catch_warnings():  # deprecated in favour of a private, non-autograd API
        warnings.simplefilter("ignore", FutureWarning)
        gathered: Tensor = all_reduce(torch.stack(slots), group=reduce_group)  # type: ignore[no-untyped-call]
    counts, means, centres, m2s = gathered[:, 0], gathered[:, 1], gathered[:, 2], gathered[:, 3]
    total = counts.sum(0)
    mean = (counts * means).sum(0) / total  # eq. 17 over the global batch
    second_moment = (m2s + counts * (centres - mean).square()).sum(0)  # Chan et al.
    var = second_moment / total  # eq. 18 ("sample") or the spread of the means
    if variance == "mixture":
        var = gathered[:, 4].sum(0) / total + var
    return mean, var


def _all_reduce(tensor: Tensor, group: object | None) -> Tensor:
    """The autograd-aware sum of ``tensor`` over the ranks of ``group``."""
    from torch.distributed.nn.functional import all_reduce

    reduce_group = group if group is not None else dist.group.WORLD
    with warnings.catch_warnings():  # deprecated in favour of a private, non-autograd API
        warnings.simplefilter("ignore", FutureWarning)
        reduced: Tensor = all_reduce(tensor, group=reduce_group)  # type: ignore[no-untyped-call]
    return reduced


def _synced_covariance(
    mu: Tensor,
    logvar: Tensor | None,
    z: Tensor | None,
    variance: str,
    pattern: str | None,
    group: object | None,
) -> tuple[Tensor, Tensor, int]:
    """The global ``(mean, cov, samples)``, mean and covariance in float64."""
    mu_s, logvar_s, z_s = F._moment_samples(mu, logvar, z, variance, pattern, upcast=False)
    work = torch.float64
    x = mu_s.to(work)
    samples, dims = x.shape
    mean_r = x.mean(0)
    data = z_s.to(work) if variance == "sample" and z_s is not None else x
    centre_r = data.mean(0)
    deviation = data - centre_r
    rows = [x.new_full((dims,), float(samples)), mean_r, centre_r]
    if variance == "mixture":
        assert logvar_s is not None
        rows.append(logvar_s.to(work).exp().sum(0))
    stats = torch.stack(rows)
    world, rank = dist.get_world_size(group), dist.get_rank(group)  # type: ignore[arg-type]
    slots = [stats if r == rank else torch.zeros_like(stats) for r in range(world)]
    m2 = deviation.T @ deviation  # this rank's centred second-moment matrix
    reduced = _all_reduce(torch.cat([torch.stack(slots).flatten(), m2.flatten()]), group)
    gathered = reduced[: stats.numel() * world].view(world, *stats.shape)
    m2_sum = reduced[stats.numel() * world :].view(dims, dims)
    counts, means, centres = gathered[:, 0], gathered[:, 1], gathered[:, 2]
    total = counts.sum(0)
    mean = (counts * means).sum(0) / total  # eq. 17 over the global batch
    offsets = centres - mean
    between = (counts * offsets).T @ offsets  # sum_r n_r (c_r - m)(c_r - m)^T
    cov = (m2_sum + between) / total[0]  # Chan et al.
    if variance == "mixture":
        cov = cov + torch.diag(gathered[:, 3].sum(0) / total)
    return mean, cov, round(float(total[0]))


def synced_batch_covariance(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: F.Variance = "sample",
    pattern: str | None = None,
    group: object | None = None,
) -> tuple[Tensor, Tensor]:
    r""":func:`mixelbo.functional.batch_covariance` over the batch of every rank in ``group``.

    Args:
        mu, logvar, z, variance, pattern: as in :func:`mixelbo.functional.batch_covariance`;
            each rank passes its own slice (batch sizes may differ, latent dims may not).
        group: the process group (``None``: the default group).

    Returns:
        ``(mean, cov)`` of the concatenated batch, shapes ``(dims,)`` and ``(dims, dims)``
        in the accumulation dtype, identical on every rank and differentiable.

    Raises:
        ValueError: as :func:`mixelbo.functional.batch_covariance` (checked locally per rank).
    """
    mean, cov, _ = _synced_covariance(mu, logvar, z, variance, pattern, group)
    dtype = accumulation_dtype(mu)
    return mean.to(dtype), cov.to(dtype)


def synced_mixture_kl(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: F.Variance = "sample",
    covariance: F.Covariance = "diagonal",
    reduction: F.DimReduction = "sum",
    pattern: str | None = None,
    group: object | None = None,
) -> Tensor:
    """:func:`mixelbo.functional.mixture_kl` (eq. 19) with the global-batch moments of
    :func:`synced_batch_moments` (``covariance="full"``: :func:`synced_batch_covariance`);
    the same value on every rank."""
    check_option("reduction", reduction, F.DIM_REDUCTIONS)
    if covariance != "diagonal":
        F.check_full_covariance_options(covariance, reduction)
        mean64, cov, samples = _synced_covariance(mu, logvar, z, variance, pattern, group)
        _full_covariance.check_full_rank(variance, samples, cov.shape[0])
        chol = _full_covariance.cholesky_factor(cov, samples, variance)
        kl = _full_covariance.kl_from_cholesky(cov, chol, mean64).to(accumulation_dtype(mu))
        return kl if reduction == "sum" else kl / cov.shape[0]
    mean, var = synced_batch_moments(mu, logvar, z, variance=variance, pattern=pattern, group=group)
    var = var.clamp_min(torch.finfo(var.dtype).tiny)
    kl_per_dim = 0.5 * (var + mean.square() - 1.0 - var.log())  # eq. 19
    return F._reduce_dims(kl_per_dim, reduction)
