"""``mixelbo-eval RUN_DIR``: the paper's section-4 experiments on a trained run, as a report.

Encodes the test split of the run's data (or ``--data``), then writes into ``--out``:

- ``reconstructions.png``, ``samples.png`` (decoded from the prior), ``samples_gaussian.png``
  and ``samples_gmm.png`` (decoded from the ex-post samplers), ``fig4_variations.png``,
  ``fig5_transitions.png``, ``fig6_joint_histogram.png``, ``latent_histograms.png``,
  ``collapse.png``;
- ``metrics.json``: reconstruction quality (L1, PSNR, SSIM), collapse metrics (active units,
  per-dim KL, posterior sigma, KL_G, KL_I), the bimodal-coordinate count, on the embedded
  dataset a linear probe of the generative factors, the ex-post samplers' fit
  (``ex_post_samplers``), and sample quality: FID, KID and precision/recall of generated
  samples (``sample_quality.by_sampler``: from N(0, I) and from the ex-post Gaussian and
  10-component Gaussian mixture fitted to the posterior means of the training images; the
  prior's also as ``sample_quality.sets.prior``) and of reconstructions against the test
  split, in the features of a network trained on the training split
  (:mod:`mixelbo_reference.features`; Inception-v3 with ``--feature-extractor-weights-path``),
  see :mod:`mixelbo_reference.sample_quality`;
- ``report.md`` (figures as relative links) and a self-contained ``report.html``.

Example::

    mixelbo-train --config cpu-64 --run-dir runs/demo
    mixelbo-eval runs/demo --out reports/demo
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mixelbo import functional as F
from mixelbo_reference import figures
from mixelbo_reference.data import to_unit_range
from mixelbo_reference.features import (
    CIRCULAR_FACTORS,
    TRAIN_STEPS,
    iter_images,
    load_or_train_feature_net,
)
from mixelbo_reference.metrics import (
    BIMODALITY_RULE,
    bimodality_test,
    l1_error,
    probe_factors,
    psnr,
    ssim,
)
from mixelbo_reference.mnist import MNIST_NAME, SPLIT_DESCRIPTION
from mixelbo_reference.report import (
    Figure,
    Heading,
    Paragraph,
    Table,
    format_number,
    write_json,
    write_report,
)
from mixelbo_reference.sample_quality import (
    GMM_COMPONENTS,
    KID_SUBSET_SIZE,
    PR_K,
    PRIOR_SAMPLERS,
    SAMPLER_LABELS,
    InceptionFeatures,
    ProjectFeatures,
    compare_sets,
    fit_ex_post_samplers,
    latent_samples,
    single_thread,
)

__all__ = [
    "CIRCULAR_FACTORS",
    "FID_BIAS_NOTE",
    "SAMPLER_FIT_IMAGES",
    "SAMPLE_SETS",
    "build_parser",
    "evaluate",
    "main",
    "most_active_dims",
    "sample_quality_blocks",
]

SAMPLE_SETS = ("prior", "reconstruction", "train")
"""The image sets compared with the test split: prior samples, reconstructions of the test
images, and training images (the value real images get at the same count)."""
SAMPLER_FIT_IMAGES = 10_000
"""Training images whose posterior means the ex-post samplers are fitted to at most (all of
the MNIST split's 4000)."""
FID_BIAS_NOTE = (
    "FID is biased upward at small sample counts (its plug-in covariances), so FIDs compare "
    "only at equal counts; the training-image row is the value real images get at this count. "
    "KID is unbiased (its spread is over the random subsets)."
)


def most_active_dims(mu: Tensor, count: int = 2) -> list[int]:
    """The ``count`` latent dims whose posterior mean varies most over the samples (Burda)."""
    activity = (mu - mu.mean(0)).square().mean(0)
    return [int(i) for i in torch.argsort(activity, descending=True)[:count]]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":  # the trainer's default: cuda when there is one
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _default_out(source: Path) -> Path:
    """``RUN/report`` for a run folder, ``RUN/report-step_N`` for one of its checkpoints."""
    from mixelbo_reference.checkpoint import resolve_checkpoint

    if source.is_dir() and (source / "checkpoints").is_dir():
        return source / "report"
    checkpoint = resolve_checkpoint(source)
    return checkpoint.parent.parent / f"report-{checkpoint.name}"


def _check_dims(name: str, dims: Sequence[int] | None, latent_dim: int) -> None:
    if dims is None:
        return
    if len(dims) != 2 or dims[0] == dims[1] or not all(0 <= d < latent_dim for d in dims):
        raise ValueError(
            f"{name} must be two different latent indices in [0, {latent_dim}); got {list(dims)}"
        )


def _feature_extractor(
    train: Any,
    test: Any,
    weights_path: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    steps: int,
    progress: bool,
) -> tuple[nn.Module | None, dict[str, Any] | None, str | None]:
    """``(extractor, its description, None)``, or ``(None, None, why the metrics are skipped)``.

    A local Inception-v3 weights file wins; else the dataset's project feature network
    (trained on the training split and cached on first use); an image folder without weights
    has none.
    """
    if weights_path is not None:
        description = {
            "task": "inception-v3",
            "weights": str(weights_path),
            "feature_dim": InceptionFeatures.num_features,
            "metric": None,
            "score": None,
        }
        return InceptionFeatures(weights_path), description, None
    loaded = load_or_train_feature_net(
        train, test, cache_dir=cache_dir, steps=steps, progress=progress
    )
    if loaded is None:
        return (
            None,
            None,
            "no feature network for this data: the project trains one for --data mnist and "
            "the embedded procedural dataset; for an image folder pass "
            "--feature-extractor-weights-path with a local Inception-v3 FID weights file "
            "(nothing is downloaded)",
        )
    net, info = loaded
    return ProjectFeatures(net), info.as_dict(), None


def _sample_quality(
    vae: Any,
    extractor: nn.Module,
    train: Any,
    test_features: Tensor,
    reconstruction_features: Tensor,
    *,
    samplers: dict[str, nn.Module],
    sample_images: int,
    kid_subset_size: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """FID, KID and precision/recall against the test split of each of :data:`SAMPLE_SETS`
    (``sets``) and of the samples of each of :data:`PRIOR_SAMPLERS` there is a sampler for
    (``by_sampler``; ``prior`` in both)."""
    latent_dim = int(vae.latent_dim)
    sampled: dict[str, Tensor] = {}
    for name in [n for n in PRIOR_SAMPLERS if n == "prior" or n in samplers]:
        generator = torch.Generator().manual_seed(seed + 2)  # the same stream for each
        features = []
        for start in tqdm(
            range(0, sample_images, batch_size),
            desc=f"{name} samples",
            unit="batch",
            disable=not progress,
        ):
            rows = min(batch_size, sample_images - start)
            z = latent_samples(name, samplers, rows, latent_dim, generator).to(device)
            features.append(extractor(vae.decode(z).float()).double().cpu())
        sampled[name] = torch.cat(features)
    reference = min(sample_images, len(train))
    train_features = [
        extractor(batch.to(device)).double().cpu()
        for batch in tqdm(
            iter_images(train, reference, batch_size=batch_size),
            total=-(-reference // batch_size),
            desc="training images",
            unit="batch",
            disable=not progress,
        )
    ]
    fakes = {
        **sampled,
        "reconstruction": reconstruction_features,
        "train": torch.cat(train_features),
    }
    scores = {
        name: compare_sets(test_features, fakes[name], kid_subset_size=kid_subset_size, seed=seed)
        for name in tqdm(fakes, desc="FID, KID, precision/recall", disable=not progress)
    }
    return {
        "test_images": len(test_features),
        "pr_k": PR_K,
        "note": FID_BIAS_NOTE,
        "sets": {name: scores[name] for name in SAMPLE_SETS},
        "by_sampler": {name: scores[name] for name in sampled},
    }


def _training_codes(
    vae: Any,
    train: Any,
    count: int,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> Tensor:
    """Posterior means of the first ``count`` training images: float64 ``(count, d)`` on CPU."""
    return torch.cat(
        [
            vae.encode(batch.to(device))[0].double().cpu()
            for batch in tqdm(
                iter_images(train, count, batch_size=batch_size),
                total=-(-count // batch_size),
                desc="encode training images",
                unit="batch",
                disable=not progress,
            )
        ]
    )


def _fit_samplers(
    vae: Any,
    train: Any,
    fit_images: int,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The ex-post samplers fitted to posterior means of training images, and their record
    for ``metrics.json`` (``{}`` and the reason in ``skipped`` when they cannot be fitted)."""
    count = min(fit_images, len(train))
    record: dict[str, Any] = {"skipped": None, "fit_images": count, "seed": seed}
    if count < GMM_COMPONENTS:
        record["skipped"] = (
            f"{count} training images; the {GMM_COMPONENTS}-component mixture needs at least "
            f"{GMM_COMPONENTS}"
        )
        return {}, record
    started = time.perf_counter()
    codes = _training_codes(
        vae, train, count, batch_size=batch_size, device=device, progress=progress
    )
    encoded = time.perf_counter()
    try:
        samplers = fit_ex_post_samplers(codes, seed=seed)
    except ValueError as error:  # e.g. non-finite posterior means of a diverged run
        record["skipped"] = str(error)
        return {}, record
    gmm = samplers["gmm"]
    record.update(
        {
            "gmm_components": GMM_COMPONENTS,
            "gmm_converged": gmm.converged,
            "gmm_iterations": gmm.n_iter,
            "gmm_log_likelihood": float(gmm.log_likelihood),
            "gaussian_log_likelihood": float(samplers["gaussian"].log_prob(codes).mean()),
            "encode_seconds": round(encoded - started, 3),
            "fit_seconds": round(time.perf_counter() - encoded, 3),
        }
    )
    return samplers, record


@torch.no_grad()
def evaluate(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    n_test: int | None = None,
    batch_size: int = 64,
    data: str | None = None,
    fig4_dims: Sequence[int] | None = None,
    fig4_image: int = 0,
    fig6_dims: Sequence[int] | None = None,
    hist_images: int = 400,
    pairs: int = 4,
    seed: int = 0,
    device: str = "cpu",
    sample_quality: bool = True,
    sample_images: int | None = None,
    kid_subset_size: int = KID_SUBSET_SIZE,
    feature_extractor_weights_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    feature_net_steps: int = TRAIN_STEPS,
    sampler_fit_images: int = SAMPLER_FIT_IMAGES,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run (or one checkpoint) and write its report folder.

    Args:
        source: a run folder or a checkpoint (whatever ``checkpoint.load_run`` accepts).
        out: report folder (default ``SOURCE/report`` for a folder, else beside the file).
        n_test: test images to evaluate (default all of the test split).
        batch_size: images per forward pass.
        data: evaluate on this image folder instead of the run's own data.
        fig4_dims: ``(i, j)`` of Fig. 4 (default: the two most active dims).
        fig4_image: index of the test image of Fig. 4.
        fig6_dims: ``(i, j)`` of Fig. 6 (default: those of Fig. 4).
        hist_images: test images in the Fig. 6 histogram (the paper uses 400).
        pairs: rows of Fig. 5 (pairs of random test images).
        seed: seed of the latent samples, the prior samples and the Fig. 5 pairs.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        sample_quality: compute FID, KID and precision/recall (``False`` skips them).
        sample_images: prior samples and training images compared with the test split
            (default: as many as the evaluated test images).
        kid_subset_size: KID's subset size (capped at half the smaller set).
        feature_extractor_weights_path: a local Inception-v3 FID weights file (torchmetrics'
            ``feature_extractor_weights_path``; needs torch-fidelity): the sample metrics use
            its features instead of the project's feature network. Nothing is downloaded.
        cache_dir: cache of the feature networks (default: the run's ``cache_dir``, else
            ``$MIXELBO_CACHE``, else ``~/.cache/mixelbo``).
        feature_net_steps: training steps of the feature network when it is not cached yet
            (a non-default count is part of the cache key).
        sampler_fit_images: training images (the first ones of the whole training split)
            whose posterior means the ex-post samplers are fitted to, at most.
        progress: show tqdm progress bars.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ValueError: on arguments out of range, or an unusable
            ``feature_extractor_weights_path``.
    """
    from mixelbo_reference.checkpoint import load_run

    for name, value, minimum in (
        ("batch_size", batch_size, 1),
        ("hist_images", hist_images, 2),
        ("pairs", pairs, 1),
        ("kid_subset_size", kid_subset_size, 2),
        ("feature_net_steps", feature_net_steps, 1),
        ("sampler_fit_images", sampler_fit_images, GMM_COMPONENTS),
    ):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if n_test is not None and n_test < 8:
        raise ValueError(f"n_test must be >= 8 (the statistics need samples); got {n_test}")
    if sample_images is not None and sample_images < PR_K + 1:
        raise ValueError(f"sample_images must be >= {PR_K + 1}; got {sample_images}")
    source_path = Path(source)
    if not source_path.exists():
        raise ValueError(f"source {str(source)!r} is neither a run folder nor a checkpoint")
    out_dir = Path(out) if out is not None else _default_out(source_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch_device = _resolve_device(device)

    vae, _, config = load_run(source_path, map_location="cpu")
    vae = vae.to(torch_device).eval()
    latent_dim = int(vae.latent_dim)
    _check_dims("fig4_dims", fig4_dims, latent_dim)
    _check_dims("fig6_dims", fig6_dims, latent_dim)
    train, test = config.datasets(data)
    if config.holdout:  # the feature network and the training-image reference are the
        # dataset's: the whole training split, also for a run that held some of it out
        train, _ = dataclasses.replace(config, holdout=0).datasets(data)
    count = len(test) if n_test is None else min(n_test, len(test))
    if count < 8:
        raise ValueError(f"the test split has {len(test)} images; at least 8 are needed")
    if not 0 <= fig4_image < count:
        raise ValueError(f"fig4_image must be in [0, {count}); got {fig4_image}")
    extractor, feature_network, skipped = None, None, None
    if not sample_quality:
        skipped = "not requested (--no-sample-quality)"
    else:
        extractor, feature_network, skipped = _feature_extractor(
            train,
            test,
            feature_extractor_weights_path,
            cache_dir if cache_dir is not None else config.cache_dir,
            feature_net_steps,
            progress,
        )
    if extractor is not None:
        extractor = extractor.to(torch_device)

    # ---- encode the test split: latents and reconstruction quality
    generator = torch.Generator().manual_seed(seed)
    mus, logvars, zs, l1s, psnrs, ssims = [], [], [], [], [], []
    test_features: list[Tensor] = []
    reconstruction_features: list[Tensor] = []
    bar = tqdm(total=count, desc="evaluate test split", unit="img", disable=not progress)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        x = to_unit_range(torch.stack([test[i] for i in range(start, stop)]).to(torch_device))
        mu, logvar = vae.encode(x)
        x_hat = vae.decode(mu).float()
        eps = torch.randn(mu.shape, generator=generator).to(torch_device)
        z = mu + eps * (0.5 * logvar).exp()
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
        zs.append(z.float().cpu())
        l1s.append(l1_error(x, x_hat).cpu())
        psnrs.append(psnr(x, x_hat).cpu())
        ssims.append(ssim(x, x_hat).cpu())
        if extractor is not None:
            test_features.append(extractor(x).double().cpu())
            reconstruction_features.append(extractor(x_hat).double().cpu())
        bar.update(stop - start)
    bar.close()
    mu, logvar, z = torch.cat(mus), torch.cat(logvars), torch.cat(zs)

    # ---- ex-post samplers: fitted to the posterior means of training images
    samplers, ex_post = _fit_samplers(
        vae,
        train,
        sampler_fit_images,
        batch_size=batch_size,
        seed=seed,
        device=torch_device,
        progress=progress,
    )

    # ---- sample quality: prior samples, reconstructions and training images vs the test split
    quality: dict[str, Any] = {"skipped": skipped, "feature_network": feature_network}
    if extractor is not None:
        # one thread on CPU: small decodes, convolutions and matrix products (see compare_sets)
        with single_thread() if torch_device.type == "cpu" else contextlib.nullcontext():
            sampled = _sample_quality(
                vae,
                extractor,
                train,
                torch.cat(test_features),
                torch.cat(reconstruction_features),
                samplers=samplers,
                sample_images=count if sample_images is None else sample_images,
                kid_subset_size=kid_subset_size,
                batch_size=batch_size,
                seed=seed,
                device=torch_device,
                progress=progress,
            )
        quality.update(sampled)
    mu64, logvar64 = mu.double(), logvar.double()

    # ---- collapse metrics (test split)
    kl_dims = F.kl_per_dim(mu64, logvar64)
    sigma_dims = (0.5 * logvar64).exp().mean(0)
    collapse = {
        "active_units": int(F.active_units(mu64)),
        "active_units_threshold": 0.01,
        "latent_dim": latent_dim,
        "mean_posterior_sigma": float(F.mean_posterior_sigma(logvar64)),
        "kl_g_mixture_variance": float(F.mixture_kl(mu64, logvar64, variance="mixture")),
        "kl_g_sample_variance": float(F.mixture_kl(mu64, logvar64, z.double())),
        "kl_i_per_image": float(F.individual_variance_kl(logvar64, reduction="batchmean")),
        "standard_kl_per_image": float(F.gaussian_kl(mu64, logvar64)),
        "dims_with_kl_below_0.01": int((kl_dims < 0.01).sum()),
        "kl_per_dim": kl_dims.tolist(),
        "sigma_per_dim": sigma_dims.tolist(),
    }
    reconstruction = {
        "images": count,
        "l1": float(torch.cat(l1s).mean()),
        "psnr_db": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
    }

    # ---- bimodality of the sampled latents and of the means
    bimodal_z = bimodality_test(z.double().numpy(), progress=progress)
    bimodal_mu = bimodality_test(mu64.numpy(), progress=progress)
    bimodality = {
        "rule": BIMODALITY_RULE,
        "samples": count,
        "bimodal_dims_z": bimodal_z.count,
        "bimodal_dims_mu": bimodal_mu.count,
        "latent_dim": latent_dim,
        "sarle_above_5_9_z": int(np.sum(bimodal_z.sarle > 5 / 9)),
        "bimodal_indices_z": np.flatnonzero(bimodal_z.bimodal).tolist(),
        "mode_means_z": bimodal_z.means[bimodal_z.bimodal].tolist(),
    }

    # ---- probe of the generative factors (embedded dataset only)
    probe: list[dict[str, Any]] | None = None
    factors = getattr(test, "factors", None)
    if factors is not None and count >= 16:
        names = list(test.factor_names)
        scores = probe_factors(
            mu64.numpy(),
            np.asarray(factors)[:count],
            names,
            list(test.factor_kinds),
            seed=seed,
            periods={k: v for k, v in CIRCULAR_FACTORS.items() if k in names},
        )
        probe = [asdict(score) for score in scores]

    # ---- figures
    dims4 = list(fig4_dims) if fig4_dims is not None else most_active_dims(mu, 2)
    dims6 = list(fig6_dims) if fig6_dims is not None else dims4
    shown = min(8, count)
    x_shown = to_unit_range(torch.stack([test[i] for i in range(shown)]).to(torch_device))
    figures.save_image_grid(
        figures.reconstruction_grid(vae, x_shown),
        out_dir / "reconstructions.png",
        row_labels=["test image", "reconstruction"],
        title="Test images and their reconstructions (decoded posterior means)",
    )
    figures.save_image_grid(
        figures.prior_samples(
            vae,
            latent_dim,
            6,
            8,
            generator=torch.Generator().manual_seed(seed),
            device=torch_device,
        ),
        out_dir / "samples.png",
        title="Samples decoded from the prior z ~ N(0, I)",
    )
    for name, sampler_label in SAMPLER_LABELS.items():
        if name in samplers:  # the same 6 x 8 grid from each ex-post sampler
            z_grid = latent_samples(
                name, samplers, 48, latent_dim, torch.Generator().manual_seed(seed)
            )
            decoded = vae.decode(z_grid.to(torch_device))
            figures.save_image_grid(
                decoded.reshape(6, 8, *decoded.shape[1:]),
                out_dir / f"samples_{name}.png",
                title=f"Samples decoded from the {sampler_label}",
            )
    steps = figures.FIG4_STEPS
    labels = [f"{k:+g}σ" if k else "μ" for k in steps]
    variations = figures.variation_grid(
        vae, to_unit_range(test[fig4_image].to(torch_device)), (dims4[0], dims4[1])
    )
    figures.save_image_grid(
        variations.flip(0),  # the vertical axis grows upwards
        out_dir / "fig4_variations.png",
        col_labels=labels,
        row_labels=labels[::-1],
        xlabel=f"z_{dims4[0]} = μ + kσ",
        ylabel=f"z_{dims4[1]} = μ + kσ",
        title=f"Fig. 4: variations of test image {fig4_image}",
    )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1))
    used_pairs = min(pairs, count // 2)
    pair_list = list(
        zip(order[:used_pairs].tolist(), order[used_pairs : 2 * used_pairs].tolist(), strict=True)
    )
    first = to_unit_range(torch.stack([test[int(i)] for i in order[:used_pairs]]).to(torch_device))
    second = to_unit_range(
        torch.stack([test[int(i)] for i in order[used_pairs : 2 * used_pairs]]).to(torch_device)
    )
    transitions = figures.transition_grid(vae, first, second, steps=6)
    with_ends = torch.cat([first[:, None], transitions.to(first.dtype), second[:, None]], dim=1)
    figures.save_image_grid(
        with_ends,
        out_dir / "fig5_transitions.png",
        col_labels=["x₁", *[f"a={k / 5:.1f}" for k in range(6)], "x₂"],
        row_labels=[f"{a}→{b}" for a, b in pair_list],
        title="Fig. 5: transitions z = (1 - a) z₁ + a z₂ between test images",
    )
    in_histogram = min(hist_images, count)
    figures.save_joint_histogram(
        z[:in_histogram, dims6[0]],
        z[:in_histogram, dims6[1]],
        out_dir / "fig6_joint_histogram.png",
        names=(f"z_{dims6[0]}", f"z_{dims6[1]}"),
        title=f"Fig. 6: sampled latents of {in_histogram} test images",
    )
    histogram_dims = most_active_dims(mu, min(8, latent_dim))
    figures.save_latent_histograms(
        z.numpy(),
        histogram_dims,
        [bool(bimodal_z.bimodal[d]) for d in histogram_dims],
        out_dir / "latent_histograms.png",
    )
    figures.save_collapse_histograms(kl_dims, sigma_dims, out_dir / "collapse.png")

    metrics: dict[str, Any] = {
        "source": str(source_path),
        "objective": config.objective,
        "beta": config.beta,
        "gan": config.gan,
        "model": config.model,
        "data": data if data is not None else config.data,
        "device": str(torch_device),
        "reconstruction": reconstruction,
        "collapse": collapse,
        "bimodality": bimodality,
        "probe": probe,
        "ex_post_samplers": ex_post,
        "sample_quality": quality,
        "figures": {
            "fig4_dims": dims4,
            "fig4_image": fig4_image,
            "fig4_steps": list(steps),
            "fig5_pairs": [list(pair) for pair in pair_list],
            "fig6_dims": dims6,
            "fig6_images": in_histogram,
        },
        "report": str(out_dir / "report.html"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(metrics, out_dir / "metrics.json")
    write_report(out_dir, f"mixelbo evaluation: {config.objective}", report_blocks(metrics))
    return metrics


def data_label(data: str | None) -> str:
    """What a report says the data was: the dataset and, for ``mnist``, its fixed split."""
    if data is None:
        return "`embedded procedural dataset`"
    if data == MNIST_NAME:
        return f"`{data}` ({SPLIT_DESCRIPTION})"
    return f"`{data}`"


def objective_label(metrics: dict[str, Any]) -> str:
    """``mixture``, ``beta-vae (beta=0.5)``, ... plus ``no GAN`` when ablated."""
    label = str(metrics["objective"])
    if label == "beta-vae":
        label += f" (beta={metrics['beta']:g})"
    if not metrics.get("gan", True):
        label += ", no GAN"
    return label


def report_blocks(metrics: dict[str, Any]) -> list[Any]:
    """The report of one run as blocks (see :mod:`mixelbo_reference.report`)."""
    rec, col, bim = metrics["reconstruction"], metrics["collapse"], metrics["bimodality"]
    fig = metrics["figures"]
    blocks: list[Any] = [
        Paragraph(
            f"Run `{metrics['source']}`: model `{metrics['model']}`, objective "
            f"`{objective_label(metrics)}`, data {data_label(metrics['data'])}, evaluated on "
            f"{rec['images']} test images on `{metrics['device']}` in {metrics['seconds']} s."
        ),
        Heading("Reconstruction quality (test split)"),
        Paragraph(
            "Reconstructions decode the posterior mean. Images are in [-1, 1]: L1 is the mean "
            "absolute error per pixel and channel; PSNR uses a peak-to-peak range of 2; SSIM "
            "is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), per channel."
        ),
        Table(["L1", "PSNR (dB)", "SSIM"], [[rec["l1"], rec["psnr_db"], rec["ssim"]]]),
        Figure("reconstructions.png", "Test images (top) and reconstructions (bottom)."),
        Figure("samples.png", "Images decoded from z ~ N(0, I)."),
        *ex_post_blocks(metrics.get("ex_post_samplers")),
        *sample_quality_blocks(metrics.get("sample_quality")),
        Heading("Posterior collapse (test split)"),
        Paragraph(
            "Active units (Burda et al. 2016): dims whose posterior mean has variance > 0.01 "
            "over the test split. KL_G is eq. 19 for the whole test split (aggregate variance "
            "from the exact mixture, and from eq. 18 with one sampled z per image); KL_I is "
            "eq. 20 per image; the standard KL (eq. 10) per image is given for comparison. "
            "A mean sigma near 0 means Dirac-like posteriors; near 1 with zero KL, collapse to "
            "the prior."
        ),
        Table(
            ["quantity", "value"],
            [
                ["active units", f"{col['active_units']} of {col['latent_dim']}"],
                ["dims with standard KL < 0.01", col["dims_with_kl_below_0.01"]],
                ["mean posterior sigma", col["mean_posterior_sigma"]],
                ["KL_G (mixture variance)", col["kl_g_mixture_variance"]],
                ["KL_G (eq. 18 sample variance)", col["kl_g_sample_variance"]],
                ["KL_I per image (eq. 20)", col["kl_i_per_image"]],
                ["standard KL per image (eq. 10)", col["standard_kl_per_image"]],
            ],
        ),
        Figure("collapse.png", "Per-dim standard KL and per-dim mean posterior sigma."),
        Heading("Bimodal latent coordinates"),
        Paragraph(
            f"{bim['bimodal_dims_z']} of {bim['latent_dim']} latent coordinates are bimodal "
            f"over {bim['samples']} test images (one sampled z per image; "
            f"{bim['bimodal_dims_mu']} for the posterior means). The paper reports 198 of 512 "
            f"on CelebA-HQ. {bim['sarle_above_5_9_z']} coordinates have Sarle's coefficient "
            f"above 5/9. Test: {bim['rule']}"
        ),
        Figure(
            "latent_histograms.png",
            "Histograms of the sampled latents of the 8 most active dims (bimodal ones marked).",
        ),
        Figure(
            "fig6_joint_histogram.png",
            f"Fig. 6: joint histogram of z_{fig['fig6_dims'][0]} and z_{fig['fig6_dims'][1]} "
            f"over {fig['fig6_images']} test images, with the marginal histograms.",
        ),
        Heading("Generative behaviour"),
        Figure(
            "fig4_variations.png",
            f"Fig. 4: test image {fig['fig4_image']}, coordinates z_{fig['fig4_dims'][0]} "
            f"(horizontal) and z_{fig['fig4_dims'][1]} (vertical) set to mu + k sigma, "
            "k in {-20, -10, 0, 10, 20}; all other coordinates at the posterior mean.",
        ),
        Figure(
            "fig5_transitions.png",
            "Fig. 5: each row decodes z = (1 - a) z1 + a z2, a = k/5, k = 0..5, between the "
            "posterior means of two random test images (shown at both ends).",
        ),
    ]
    if metrics["probe"]:
        blocks += [
            Heading("Probe of the generative factors"),
            Paragraph(
                "Linear probe from the posterior means, fitted on a random half of the "
                "evaluated test images and scored on the other half: ridge R^2 for continuous "
                "factors (circular ones through cos and sin), one-vs-rest linear accuracy for "
                "discrete ones, beside the score of a predictor that ignores the latents."
            ),
            Table(
                ["factor", "kind", "metric", "score", "baseline"],
                [
                    [p["name"], p["kind"], p["metric"], p["score"], p["baseline"]]
                    for p in metrics["probe"]
                ],
            ),
        ]
    return blocks


def _feature_network_text(network: dict[str, Any]) -> str:
    """One sentence on the feature space: which network, trained how, how good."""
    if network["task"] == "inception-v3":
        return (
            "Features: Inception-v3's 2048-d pool layer (torchmetrics / torch-fidelity) from the "
            f"local weights file `{network['weights']}` (Inception-v3 FID)."
        )
    what = {
        "mnist-classifier": "a digit classifier",
        "procedural-factor-regressor": "a regressor of the generative factors",
    }[network["task"]]
    origin = "loaded from the cache" if network["from_cache"] else "trained for this evaluation"
    text = (
        f"Features: the {network['feature_dim']}-d penultimate layer of {what} trained by the "
        f"project on {network['train_images']} images of the training split "
        f"({network['parameters']} parameters, {network['steps']} Adam steps, "
        f"{network['train_seconds']} s; {origin}: `{network['path']}`); "
        f"{network['metric']} {format_number(network['score'])} on {network['test_images']} "
        "test images."
    )
    if network["per_target"]:
        text += " R^2 per factor: " + ", ".join(
            f"{name} {format_number(value)}" for name, value in network["per_target"].items()
        )
        text += "."
    return text


def ex_post_blocks(ex_post: dict[str, Any] | None) -> list[Any]:
    """The report's figures of the ex-post samplers (empty for metrics written before them)."""
    if ex_post is None:
        return []
    if ex_post["skipped"] is not None:
        return [Paragraph(f"Ex-post samplers not fitted: {ex_post['skipped']}.")]
    converged = "converged" if ex_post["gmm_converged"] else "did not converge"
    return [
        Paragraph(
            "Ex-post samplers (Ghosh et al. 2020): a full-covariance Gaussian and a "
            f"{ex_post['gmm_components']}-component full-covariance Gaussian mixture fitted to "
            f"the posterior means of {ex_post['fit_images']} training images (mixelbo's "
            "GaussianSampler and GaussianMixtureSampler; the mixture's EM "
            f"{converged} in {ex_post['gmm_iterations']} steps, {ex_post['fit_seconds']} s for "
            "both fits); their samples are decoded like the prior's."
        ),
        Figure("samples_gaussian.png", f"Images decoded from the {SAMPLER_LABELS['gaussian']}."),
        Figure("samples_gmm.png", f"Images decoded from the {SAMPLER_LABELS['gmm']}."),
    ]


def sample_quality_blocks(quality: dict[str, Any] | None) -> list[Any]:
    """The report's sample-quality section (empty for metrics written before it existed)."""
    if quality is None:
        return []
    blocks: list[Any] = [Heading("Sample quality (against the test split)")]
    if quality["skipped"] is not None:
        return [*blocks, Paragraph(f"FID, KID and precision/recall skipped: {quality['skipped']}.")]
    sets = quality["sets"]
    labels = {
        **SAMPLER_LABELS,
        "reconstruction": "reconstructions of the test images",
        "train": "training images (real-data reference)",
    }
    # one row per sampler (the prior's only, in metrics written before the ex-post samplers)
    rows = {**quality.get("by_sampler", {"prior": sets["prior"]}), **sets}
    kid = sets["prior"]
    blocks += [
        Paragraph(
            f"Each set is compared with {quality['test_images']} test images in one feature "
            f"space. {_feature_network_text(quality['feature_network'])} FID: torchmetrics' "
            "FrechetInceptionDistance on these features. KID: torchmetrics' "
            f"KernelInceptionDistance, mean and sd over {kid['kid_subsets']} random subsets of "
            f"{kid['kid_subset_size']} images. Precision and recall: Kynkaanniemi et al. (2019), "
            f"k-NN manifolds with k = {quality['pr_k']}. {quality['note']}"
        ),
        Table(
            ["compared set", "images", "FID", "KID", "KID sd", "precision", "recall"],
            [
                [
                    labels[name],
                    row["images"],
                    row["fid"],
                    row["kid_mean"],
                    row["kid_std"],
                    row["precision"],
                    row["recall"],
                ]
                for name, row in rows.items()
            ],
        ),
    ]
    return blocks


def build_parser() -> argparse.ArgumentParser:
    """The ``mixelbo-eval`` command line."""
    parser = argparse.ArgumentParser(
        prog="mixelbo-eval",
        description="Evaluate a trained run: figures 4-6 of the paper, collapse metrics, "
        "reconstruction quality, bimodality count, factor probe; writes metrics.json, "
        "report.md and a self-contained report.html.",
    )
    parser.add_argument("source", help="run folder or checkpoint written by mixelbo-train")
    parser.add_argument("--out", default=None, help="report folder (default: SOURCE/report)")
    parser.add_argument(
        "--n-test", type=int, default=None, help="test images to evaluate (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--data", default=None, help="evaluate on this image folder instead of the run's data"
    )
    parser.add_argument(
        "--fig4-dims",
        type=int,
        nargs=2,
        metavar=("I", "J"),
        default=None,
        help="latent coordinates of Fig. 4 (default: the two most active)",
    )
    parser.add_argument("--fig4-image", type=int, default=0, help="test image of Fig. 4")
    parser.add_argument(
        "--fig6-dims",
        type=int,
        nargs=2,
        metavar=("I", "J"),
        default=None,
        help="latent coordinates of Fig. 6 (default: those of Fig. 4)",
    )
    parser.add_argument(
        "--hist-images", type=int, default=400, help="test images in Fig. 6 (paper: 400)"
    )
    parser.add_argument("--pairs", type=int, default=4, help="rows (image pairs) of Fig. 5")
    parser.add_argument("--seed", type=int, default=0, help="seed of samples and pairs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--no-sample-quality",
        action="store_true",
        help="skip FID, KID and precision/recall (and the feature network's training)",
    )
    parser.add_argument(
        "--sample-images",
        type=int,
        default=None,
        help="prior samples and training images compared with the test split "
        "(default: as many as the evaluated test images)",
    )
    parser.add_argument(
        "--kid-subset-size",
        type=int,
        default=KID_SUBSET_SIZE,
        help="images per KID subset (capped at half the smaller set)",
    )
    parser.add_argument(
        "--feature-extractor-weights-path",
        default=None,
        help="local Inception-v3 FID weights (torch-fidelity's pt_inception-2015-12-05 file): "
        "FID/KID/PR in its features, e.g. for an image folder; never downloaded",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache of the feature networks (default: the run's --cache-dir, else the "
        "MIXELBO_CACHE environment variable, else ~/.cache/mixelbo)",
    )
    parser.add_argument(
        "--feature-net-steps",
        type=int,
        default=TRAIN_STEPS,
        help="training steps of the feature network when it is not cached yet",
    )
    parser.add_argument(
        "--sampler-fit-images",
        type=int,
        default=SAMPLER_FIT_IMAGES,
        help="training images whose posterior means the ex-post samplers (full Gaussian, "
        f"{GMM_COMPONENTS}-component GMM) are fitted to, at most",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixelbo-eval``."""
    args = build_parser().parse_args(argv)
    try:
        metrics = evaluate(
            args.source,
            args.out,
            n_test=args.n_test,
            batch_size=args.batch_size,
            data=args.data,
            fig4_dims=args.fig4_dims,
            fig4_image=args.fig4_image,
            fig6_dims=args.fig6_dims,
            hist_images=args.hist_images,
            pairs=args.pairs,
            seed=args.seed,
            device=args.device,
            sample_quality=not args.no_sample_quality,
            sample_images=args.sample_images,
            kid_subset_size=args.kid_subset_size,
            feature_extractor_weights_path=args.feature_extractor_weights_path,
            cache_dir=args.cache_dir,
            feature_net_steps=args.feature_net_steps,
            sampler_fit_images=args.sampler_fit_images,
            progress=not args.no_progress,
        )
    except ValueError as error:
        print(f"mixelbo-eval: error: {error}", file=sys.stderr)
        return 2
    rec, col, bim = metrics["reconstruction"], metrics["collapse"], metrics["bimodality"]
    print(
        f"L1 {rec['l1']:.4f}  PSNR {rec['psnr_db']:.2f} dB  SSIM {rec['ssim']:.4f}  "
        f"active units {col['active_units']}/{col['latent_dim']}  "
        f"bimodal dims {bim['bimodal_dims_z']}/{bim['latent_dim']}"
    )
    quality = metrics["sample_quality"]
    if quality["skipped"] is None:
        for name, row in quality["by_sampler"].items():
            what = "prior samples" if name == "prior" else f"ex-post {name} samples"
            print(
                f"{what}: FID {row['fid']:.3g}  KID {row['kid_mean']:.3g}  "
                f"precision {row['precision']:.3f}  recall {row['recall']:.3f}"
            )
    else:
        print(f"sample quality skipped: {quality['skipped']}")
    print(f"report: {Path(metrics['report']).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
