"""Sample quality in a feature space: FID and KID (torchmetrics) and improved precision/recall.

Every image set is mapped once through a feature extractor (:class:`ProjectFeatures`, the
penultimate layer of a network trained by :mod:`mixelbo_reference.features`, or
:class:`InceptionFeatures`, torchmetrics' Inception-v3 from a local weights file); the three
metrics then compare the same features:

- :func:`frechet_distance`: torchmetrics' ``FrechetInceptionDistance`` (Heusel et al. 2017),
  ``||m_r - m_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``. It is biased upward at small sample
  sizes (the plug-in covariances), so FIDs compare only at equal counts.
- :func:`kernel_distance`: torchmetrics' ``KernelInceptionDistance`` (Binkowski et al. 2018),
  the unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``, mean and standard
  deviation over random subsets of ``subset_size`` of each set (seeded).
- :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019). Each set's
  manifold is the union of balls around its features with radius the distance to the k-th
  nearest other feature of the same set (k = 3); precision is the share of generated features
  inside the real manifold, recall the share of real features inside the generated one.

The features are passed to torchmetrics through :class:`PrecomputedFeatures` (its ``feature=``
module, the identity with a ``num_features`` attribute, so torchmetrics never probes it with a
dummy image): no set goes through the network twice.

Generated images come from latents of one of :data:`PRIOR_SAMPLERS`: the prior
``N(0, I)``, or an ex-post sampler fitted to the posterior means of the training images
(:func:`fit_ex_post_samplers`, :class:`mixelbo.GaussianSampler` and
:class:`mixelbo.GaussianMixtureSampler`; Ghosh et al. 2020); :func:`latent_samples` draws
from any of them.

Example:
    >>> real, fake = torch.randn(500, 16), torch.randn(500, 16) + 0.5
    >>> scores = compare_sets(real, fake, kid_subset_size=100)
    >>> sorted(scores)  # doctest: +NORMALIZE_WHITESPACE
    ['fid', 'images', 'kid_mean', 'kid_std', 'kid_subset_size', 'kid_subsets', 'precision',
     'recall']
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from mixelbo import GaussianMixtureSampler, GaussianSampler
from mixelbo_reference.data import to_unit_range
from mixelbo_reference.features import FeatureNet

__all__ = [
    "GMM_COMPONENTS",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "PRIOR_SAMPLERS",
    "PR_K",
    "SAMPLER_LABELS",
    "InceptionFeatures",
    "PrecomputedFeatures",
    "ProjectFeatures",
    "compare_sets",
    "extract_features",
    "fit_ex_post_samplers",
    "frechet_distance",
    "kernel_distance",
    "latent_samples",
    "precision_recall",
    "single_thread",
    "to_uint8",
]

PR_K = 3
"""Neighbours of the k-NN manifolds of precision and recall (Kynkaanniemi et al.'s k)."""
KID_SUBSETS = 100
"""Random subsets KID is averaged over (torchmetrics' default)."""
KID_SUBSET_SIZE = 1000
"""Images per KID subset (torchmetrics' default); :func:`compare_sets` caps it at half the
smaller set."""
PRIOR_SAMPLERS: tuple[str, ...] = ("prior", "gaussian", "gmm")
"""Where generated latents come from: ``prior``, ``z ~ N(0, I)``; ``gaussian``, the ex-post
full-covariance Gaussian (:class:`mixelbo.GaussianSampler`); ``gmm``, the ex-post
:data:`GMM_COMPONENTS`-component full-covariance mixture
(:class:`mixelbo.GaussianMixtureSampler`), both fitted to posterior means of training images
by :func:`fit_ex_post_samplers`."""
GMM_COMPONENTS = 10
"""Components of the ex-post Gaussian mixture (Ghosh et al. 2020 use 10)."""
SAMPLER_LABELS = {
    "prior": "prior samples, z ~ N(0, I)",
    "gaussian": "ex-post Gaussian, z ~ N(m, S) of the training codes",
    "gmm": f"ex-post GMM, {GMM_COMPONENTS} full-covariance components",
}
"""What a report calls each of :data:`PRIOR_SAMPLERS`."""


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one torch intra-op thread, then restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_uint8(x: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` to uint8 ``[0, 255]``: ``round((x + 1) * 127.5)``, clamped.

    The inverse of the datasets' ``u / 127.5 - 1``: exact on images that came from uint8.
    """
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _as_float_images(x: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` images as float32 in ``[-1, 1]``."""
    if x.dtype == torch.uint8:
        return to_unit_range(x)
    return x.float().clamp(-1, 1)


class ProjectFeatures(nn.Module):
    """The penultimate layer of a project feature network, for images in ``[-1, 1]``.

    Decoded images outside ``[-1, 1]`` are clamped to it (the range of real images); uint8
    images are scaled as the datasets scale them.

    Args:
        net: A trained :class:`~mixelbo_reference.features.FeatureNet`.

    Shape:
        ``(B, 3, S, S)`` float or uint8 -> ``(B, 128)`` float32.
    """

    def __init__(self, net: FeatureNet) -> None:
        super().__init__()
        self.net = net.eval()
        self.num_features = int(net.head.in_features)

    def forward(self, x: Tensor) -> Tensor:
        """The features of a batch."""
        return self.net.features(_as_float_images(x))


class InceptionFeatures(nn.Module):
    """Inception-v3's 2048-d pool features (torchmetrics / torch-fidelity) from a local file.

    torchmetrics' ``NoTrainInceptionV3`` with ``feature_extractor_weights_path``: the FID
    network of Heusel et al. (the ``pt_inception-2015-12-05`` weights, as torch-fidelity
    distributes them). Nothing is downloaded: without a file there is no Inception network.
    Images in ``[-1, 1]`` are turned to uint8 and resized to 299x299 by torchmetrics.

    Args:
        weights_path: The weights file.

    Raises:
        ValueError: If the file does not exist, torch-fidelity is not installed, or the file
            does not load into the network.
    """

    num_features = 2048

    def __init__(self, weights_path: str | os.PathLike[str]) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise ValueError(f"feature_extractor_weights_path {str(path)!r} is not a file")
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ValueError(
                "Inception-v3 features need torch-fidelity (pip install torch-fidelity); "
                f"got feature_extractor_weights_path {str(path)!r} but it is not installed"
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.inception = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(self.num_features)],
                feature_extractor_weights_path=str(path),
            )
        except (RuntimeError, OSError, KeyError) as error:
            raise ValueError(
                f"feature_extractor_weights_path {str(path)!r} does not hold Inception-v3 "
                f"FID weights: {error}"
            ) from error

    def forward(self, x: Tensor) -> Tensor:
        """The features of a batch of images in ``[-1, 1]`` (or uint8)."""
        images = x if x.dtype == torch.uint8 else to_uint8(x)
        return self.inception(images)


@torch.no_grad()
def extract_features(
    extractor: nn.Module, batches: Iterable[Tensor], device: str | torch.device = "cpu"
) -> Tensor:
    """Features of image batches, concatenated: float64 ``(N, d)`` on CPU.

    Args:
        extractor: A feature module (``(B, 3, H, W)`` -> ``(B, d)``).
        batches: Image batches (float in ``[-1, 1]`` or uint8).
        device: Where the extractor runs.

    Returns:
        The features.

    Raises:
        ValueError: If no batch is given.
    """
    parts = [extractor(batch.to(device)).double().cpu() for batch in batches]
    if not parts:
        raise ValueError("batches must hold at least one image batch; got none")
    return torch.cat(parts)


class PrecomputedFeatures(nn.Module):
    """torchmetrics' ``feature=`` module for features already extracted: the identity.

    Args:
        num_features: The feature width ``d`` (so torchmetrics need not probe the module).

    Shape:
        ``(N, d)`` -> ``(N, d)``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: Tensor) -> Tensor:
        """The features, unchanged."""
        return features


def _check_features(real: Tensor, fake: Tensor, minimum: int) -> None:
    for name, value in (("real", real), ("fake", fake)):
        if not isinstance(value, Tensor) or value.ndim != 2:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be an (N, d) feature tensor; got {shape}")
        if len(value) < minimum:
            raise ValueError(f"{name} needs at least {minimum} feature rows; got {len(value)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} features must be finite; got NaN or inf")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake must have the same feature width; got {real.shape[1]} and "
            f"{fake.shape[1]}"
        )


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets, by torchmetrics' ``FrechetInceptionDistance``.

    Args:
        real, fake: ``(N, d)`` and ``(M, d)`` features, ``N, M >= 2``.

    Returns:
        The Frechet distance of the two fitted Gaussians (float64 arithmetic).

    Raises:
        ValueError: On malformed, too few or non-finite features.
    """
    _check_features(real, fake, 2)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    *,
    subset_size: int = KID_SUBSET_SIZE,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float, int]:
    """KID between two feature sets, by torchmetrics' ``KernelInceptionDistance``.

    Args:
        real, fake: ``(N, d)`` and ``(M, d)`` features.
        subset_size: Images per subset; capped at ``min(N, M)``.
        subsets: Random subsets averaged over.
        seed: Seed of the subsets (the global torch RNG is left as it was).

    Returns:
        ``(mean, std, subset_size used)``.

    Raises:
        ValueError: On malformed, too few (< 2) or non-finite features, or ``subset_size`` /
            ``subsets`` < 2 / < 1.
    """
    _check_features(real, fake, 2)
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2; got {subset_size}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1; got {subsets}")
    used = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": they are given
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=used
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), used


def _kth_neighbour_radii(features: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row to its k-th nearest other row (itself excluded)."""
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start : start + chunk], features)
        # the k + 1 smallest include the row itself at distance 0
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _coverage(queries: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Share of ``queries`` within ``radii[j]`` of some ``centres[j]``."""
    inside = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(queries[start : start + chunk], centres)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: Tensor, fake: Tensor, *, k: int = PR_K, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of two feature sets.

    The real manifold is the union of the balls ``B(r_i, d_k(r_i))``, ``d_k`` the Euclidean
    distance from ``r_i`` to its k-th nearest other real feature; the generated manifold
    likewise. Precision: the share of generated features inside the real manifold (are the
    samples realistic?). Recall: the share of real features inside the generated manifold (do
    the samples cover the data?). Distances by ``torch.cdist`` in float64, ``chunk`` rows at a
    time.

    Args:
        real, fake: ``(N, d)`` and ``(M, d)`` features, ``N, M > k``.
        k: The neighbour of the radii (3 in the paper).
        chunk: Rows per distance block (bounds memory at ``chunk * max(N, M)`` floats).

    Returns:
        ``(precision, recall)``, each in ``[0, 1]``.

    Raises:
        ValueError: On malformed, too few or non-finite features, ``k < 1`` or ``chunk < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    _check_features(real, fake, k + 1)
    real, fake = real.double(), fake.double()
    real_radii = _kth_neighbour_radii(real, k, chunk)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)
    precision = _coverage(fake, real, real_radii, chunk)
    recall = _coverage(real, fake, fake_radii, chunk)
    return precision, recall


def compare_sets(
    real: Tensor,
    fake: Tensor,
    *,
    k: int = PR_K,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> dict[str, Any]:
    """FID, KID and precision/recall of ``fake`` against ``real`` features.

    Computed on CPU on one torch thread (:func:`single_thread`): KID's 100 products of
    500x128 float64 matrices took 1.8 s on one thread and 25 s on two on a 2-core machine
    shared with other jobs (OpenMP threads wait on each other), and at most twice as long on
    one thread as on two on an idle one.

    Args:
        real, fake: ``(N, d)`` and ``(M, d)`` features, ``N, M > k``.
        k: Neighbour of precision/recall.
        kid_subset_size: KID's subset size, capped at half the smaller set (at least 2), so
            the subsets differ and their spread means something (subsets of all ``N`` images
            would all give the same unbiased estimate).
        kid_subsets: KID's number of subsets.
        seed: Seed of KID's subsets.

    Returns:
        ``{"images": M, "fid", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets",
        "precision", "recall"}``.

    Raises:
        ValueError: On malformed, too few or non-finite features.
    """
    half = max(2, min(len(real), len(fake)) // 2)
    with single_thread():
        kid_mean, kid_std, used = kernel_distance(
            real, fake, subset_size=min(kid_subset_size, half), subsets=kid_subsets, seed=seed
        )
        precision, recall = precision_recall(real, fake, k=k)
        fid = frechet_distance(real, fake)
    return {
        "images": len(fake),
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": used,
        "kid_subsets": kid_subsets,
        "precision": precision,
        "recall": recall,
    }


def fit_ex_post_samplers(
    codes: Tensor, *, seed: int = 0, n_components: int = GMM_COMPONENTS
) -> dict[str, nn.Module]:
    """The ex-post samplers of :data:`PRIOR_SAMPLERS`, fitted to ``codes``.

    ``"gaussian"``: :class:`mixelbo.GaussianSampler`; ``"gmm"``: an ``n_components``
    :class:`mixelbo.GaussianMixtureSampler` seeded with ``seed`` (``"prior"`` needs no fit).
    Both are fitted in float64 on the codes' device, on one torch thread for CPU codes (as
    :func:`compare_sets`: EM's small products only wait on each other with two threads on a
    loaded machine).

    Args:
        codes: ``(N, d)`` posterior means of training images, ``N >= n_components``.
        seed: Seed of the mixture's initialisation.
        n_components: Components of the mixture.

    Returns:
        ``{"gaussian": ..., "gmm": ...}``, fitted, their buffers in float64.

    Raises:
        ValueError: On codes that are not a finite ``(N, d)`` tensor with enough rows.
    """
    codes = codes.detach().double()
    with single_thread() if codes.device.type == "cpu" else nullcontext():
        return {
            "gaussian": GaussianSampler().fit(codes),
            "gmm": GaussianMixtureSampler(n_components=n_components, seed=seed).fit(codes),
        }


def latent_samples(
    name: str,
    samplers: dict[str, nn.Module],
    n: int,
    latent_dim: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` latents from one of :data:`PRIOR_SAMPLERS`, on CPU in ``dtype``.

    ``"prior"`` is ``torch.randn(n, latent_dim, generator=generator)`` (so the same generator
    gives the same prior samples as before the ex-post samplers existed); the others draw from
    ``samplers[name]`` (:func:`fit_ex_post_samplers`) with ``generator``. Consecutive calls
    with one generator continue its stream, so drawing in batches is reproducible.

    Args:
        name: One of :data:`PRIOR_SAMPLERS`.
        samplers: The fitted ex-post samplers (may be empty for ``"prior"``).
        n: Number of latents.
        latent_dim: Their width (checked against the sampler's).
        generator: A CPU random generator.
        dtype: Of the result (the decoder's; samplers fitted in float64 are cast).

    Returns:
        ``(n, latent_dim)``.

    Raises:
        ValueError: On an unknown ``name``, a missing sampler, or a sampler fitted to codes of
            another width.
    """
    if name not in PRIOR_SAMPLERS:
        raise ValueError(
            f"name must be one of {', '.join(map(repr, PRIOR_SAMPLERS))}; got {name!r}"
        )
    if name == "prior":
        return torch.randn(n, latent_dim, generator=generator).to(dtype)
    if name not in samplers:
        raise ValueError(
            f"samplers has no {name!r} sampler (has {sorted(samplers)}); fit them with "
            "fit_ex_post_samplers(codes)"
        )
    sampler: Any = samplers[name]  # a GaussianSampler or GaussianMixtureSampler
    z: Tensor = sampler.sample(n, generator=generator)
    if z.shape[1] != latent_dim:
        raise ValueError(
            f"the {name!r} sampler was fitted to {z.shape[1]}-d codes; got latent_dim {latent_dim}"
        )
    return z.to("cpu", dtype)
