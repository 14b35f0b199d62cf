"""``mixelbo-study``: the objective study of issue 11, sweeps over seeds with a validation split.

On ``--data mnist`` and on the embedded procedural dataset, with one model and one step budget
per dataset, it trains:

* the ``beta-vae`` family: the VAE (beta = 1) and beta-VAE with beta in (0.1, 0.3, 3, 10);
* the ``eq22`` family: the ``paper`` and ``authors-code`` presets and the ``mixture``
  objective with the ``sample`` and ``mixture`` KL_G variance estimators (the last is the
  recommended :meth:`mixelbo.RegularizedELBO.recommended`; with ``means`` it is the
  ``authors-code`` preset);
* the ``wae-mmd`` family: the outside baseline (:class:`~mixelbo_reference.objectives.WAEMMD`)
  with MMD weights (10, 100, 1000);

all without the adversarial term, each with several seeds; then, for the best point of each
family, the same runs with the PatchGAN term. "Best" is the lowest prior-sample FID averaged
over the seeds on a validation split: the last images of the training split, held out from
training (``TrainConfig.holdout``: 500 of MNIST's 4000 training digits, 10% of the procedural
training images). The test split is only reported, never used to choose.

Every run is scored on the validation and the test split with the metrics of ``mixelbo-eval``
(:mod:`mixelbo_reference.sample_quality`): L1 of the reconstructions (posterior means decoded),
FID / KID / precision / recall of as many prior samples as split images against the split, in
the features of the project's network for the dataset (trained on the whole training split and
cached, the one ``mixelbo-eval`` uses), and the active units (collapse: fewer than half).

Resumable: a finished training is not run again (an interrupted one resumes from its last
checkpoint) and every score is written to ``DATASET/scores/RUN.json`` as soon as it exists, so
a second call only does what is missing. Output: ``study.md`` / ``study.html`` (frontier of test
L1 against prior-sample FID, precision against recall, a table of mean +- sd over seeds and the
collapse rate, per dataset) and ``study.json``.

Example::

    mixelbo-study --out reports/study                  # the default budget: 45 min on 2 cores
    mixelbo-study --out reports/study-large --budget large --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mixelbo_reference.report import (
    Figure,
    Heading,
    Paragraph,
    Table,
    format_number,
    write_json,
    write_report,
)
from mixelbo_reference.sample_quality import PRIOR_SAMPLERS, SAMPLER_LABELS

__all__ = [
    "BUDGETS",
    "DATASETS",
    "FAMILIES",
    "Budget",
    "NonFiniteSamplesError",
    "Point",
    "build_parser",
    "main",
    "study",
    "sweep_points",
]


@dataclass(frozen=True)
class Budget:
    """Model, steps and sample counts of one study size.

    Args:
        model: the ``TrainConfig`` model of every run.
        steps: optimizer steps per run.
        batch_size: images per step.
        seeds: the seeds of every point.
        procedural_size: images of the procedural dataset (80% train, 20% test).
        max_images: cap of the validation / test images scored per run (``None``: all).
        feature_steps: steps of the feature network if it has to be trained (``None``: the
            default of :mod:`mixelbo_reference.features`, the one ``mixelbo-eval`` caches).
        gan_stage: train the best point of each family again with the PatchGAN term.
    """

    model: str
    steps: int
    batch_size: int
    seeds: tuple[int, ...]
    procedural_size: int
    max_images: int | None = None
    feature_steps: int | None = None
    gan_stage: bool = False


BUDGETS: dict[str, Budget] = {
    # Issue 21's scale: the demo's cpu-32 (grey on MNIST) at twice the demo's steps, where
    # the baselines' samples are mostly legible digits; 54 runs (18 points x 3 seeds), without
    # the GAN stage. Measured on the 2-core VM: a median 6.5 min a run (5.3-8.6), two at a
    # time, so about 3 hours in all (docs/results.md).
    "default": Budget("cpu-32", steps=3000, batch_size=32, seeds=(0, 1, 2), procedural_size=2500),
    # Issue 11's budget (docs/results.md, "the objective study"): 800 steps, with the GAN
    # stage; every objective's samples are scribbles at this size.
    "small": Budget(
        "cpu-32", steps=800, batch_size=32, seeds=(0, 1, 2), procedural_size=2500, gan_stage=True
    ),
    # The demo's model and steps with the GAN stage and more procedural images: for --device
    # cuda.
    "large": Budget(
        "cpu-32", steps=1500, batch_size=32, seeds=(0, 1, 2), procedural_size=5000, gan_stage=True
    ),
    # For tests: seconds.
    "smoke": Budget(
        "tiny-32",
        steps=2,
        batch_size=8,
        seeds=(0,),
        procedural_size=120,
        max_images=24,
        feature_steps=2,
        gan_stage=True,
    ),
}

DATASETS: tuple[str, ...] = ("mnist", "procedural")
"""``mnist`` (``--data mnist``) and ``procedural`` (the embedded dataset)."""
DEFAULT_DATASETS: tuple[str, ...] = ("mnist",)
"""What ``mixelbo-study`` trains without ``--datasets``."""

MNIST_HOLDOUT = 500
"""Validation digits held out of MNIST's 4000 training digits."""
PROCEDURAL_HOLDOUT_FRACTION = 0.1
"""Share of the procedural training images held out for validation."""
LEARNING_RATE = 1e-3
"""Adam learning rate of every run (the CPU presets' rate)."""
KID_SUBSETS = 10
"""KID's random subsets per score (``mixelbo-eval`` uses 100; the mean is unbiased either way,
and 100 subsets of 1000 images cost about as much as training a default-budget run)."""
PRIOR_SEED_OFFSET = 7919
"""Added to a run's seed for its prior samples (kept apart from its training RNG)."""
SAMPLERS: tuple[str, ...] = PRIOR_SAMPLERS
"""Where every run's samples are scored from: N(0, I) and the ex-post samplers fitted to the
posterior means of its training split (:data:`~mixelbo_reference.sample_quality.PRIOR_SAMPLERS`)."""
EX_POST_SAMPLERS: tuple[str, ...] = tuple(s for s in SAMPLERS if s != "prior")


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep: a family, a label and its ``TrainConfig`` fields."""

    family: str
    label: str
    settings: tuple[tuple[str, Any], ...]
    gan: bool = False

    @property
    def name(self) -> str:
        """The folder name of the point (``LABEL`` or ``LABEL-gan``)."""
        return f"{self.label}-gan" if self.gan else self.label

    def with_gan(self) -> Point:
        """The same point with the adversarial term."""
        return Point(self.family, self.label, self.settings, gan=True)


FAMILIES: tuple[str, ...] = ("beta-vae", "wae-mmd", "eq22", "eq22-full")
"""``eq22``: :meth:`mixelbo.RegularizedELBO.recommended` with eq. 19's diagonal KL_G;
``eq22-full``: the same with the full-covariance KL_G (``covariance="full"``)."""

BETAS: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
"""KL weights of the beta-VAE family (1: the VAE)."""
MMD_WEIGHTS: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
"""MMD weights of the WAE-MMD family."""
EQ22_WEIGHTS: tuple[tuple[float, float], ...] = (
    (500.0, 0.1),
    (1000.0, 0.1),
    (2000.0, 0.1),
    (5000.0, 0.1),
    (2000.0, 1.0),
)
"""``(beta3, beta2)`` of the eq. 22 families: the L1 weight against KL_G (5000 with KL_I 0.1
is the recommended preset) down to 500, and at 2000 a ten times stronger KL_I. Without the 500
point every diagonal eq. 22 point of the first 48 runs reconstructed better than the VAE (test
L1 0.050-0.051 against 0.052, three seeds; the KL_I point is dominated), so its frontier did not
reach the VAE's L1."""


def _eq22_label(covariance: str, beta3: float, beta2: float) -> str:
    base = "eq22-full" if covariance == "full" else "eq22"
    return f"{base}-r{beta3:g}" + ("" if beta2 == 0.1 else f"-i{beta2:g}")


def sweep_points() -> list[Point]:
    """The points trained without the adversarial term (18: four per baseline family, five per
    eq. 22 family).

    Each family is swept along its own strength: the KL weight of the beta-VAE, the MMD
    weight of WAE-MMD, and for eq. 22 (diagonal and full-covariance KL_G) the L1 weight
    against KL_G and KL_I's weight (:data:`EQ22_WEIGHTS`); every other weight is the
    recommended preset's."""
    points = [
        Point(
            "beta-vae",
            "vae" if beta == 1 else f"beta-vae-{beta:g}",
            (("objective", "vae"),) if beta == 1 else (("objective", "beta-vae"), ("beta", beta)),
        )
        for beta in BETAS
    ]
    points += [
        Point("wae-mmd", f"wae-mmd-{weight:g}", (("objective", "wae-mmd"), ("mmd_weight", weight)))
        for weight in MMD_WEIGHTS
    ]
    for covariance in ("diagonal", "full"):
        points += [
            Point(
                "eq22" if covariance == "diagonal" else "eq22-full",
                _eq22_label(covariance, beta3, beta2),
                (
                    ("objective", "mixture"),
                    ("beta3", beta3),
                    ("beta2", beta2),
                    ("covariance", covariance),
                ),
            )
            for beta3, beta2 in EQ22_WEIGHTS
        ]
    return points


def _holdout(dataset: str, budget: Budget) -> int:
    if dataset == "mnist":
        return MNIST_HOLDOUT
    return max(4, round(int(0.8 * budget.procedural_size) * PROCEDURAL_HOLDOUT_FRACTION))


def _config(
    dataset: str, budget: Budget, point: Point, seed: int, run_dir: Path, device: str = "cpu"
) -> Any:
    from mixelbo_reference.config import TrainConfig

    checkpoints = max(1, budget.steps // 2)
    return TrainConfig(
        model=budget.model,
        data="mnist" if dataset == "mnist" else None,
        procedural_size=None if dataset == "mnist" else budget.procedural_size,
        holdout=_holdout(dataset, budget),
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=LEARNING_RATE,
        seed=seed,
        gan=point.gan,
        device=device,
        run_dir=str(run_dir),
        log_every=max(1, budget.steps // 10),
        image_every=budget.steps,
        checkpoint_every=checkpoints,
        keep_checkpoints=1,
        eval_images=16,
        progress=False,
        **dict(point.settings),
    )


class NonFiniteSamplesError(RuntimeError):
    """A trained run decodes non-finite images (its scores would be meaningless)."""


class _Scorer:
    """The metrics of trained runs on one dataset's validation and test splits.

    The real images' features are extracted once per split; each run adds its reconstructions
    and, for N(0, I) and each ex-post sampler (fitted to the posterior means of the run's
    training split), as many samples as split images.
    """

    def __init__(self, config: Any, budget: Budget, progress: bool) -> None:
        from mixelbo_reference.features import iter_images, load_or_train_feature_net
        from mixelbo_reference.sample_quality import ProjectFeatures, extract_features

        train, test = config.replace(holdout=0).datasets()
        options = {} if budget.feature_steps is None else {"steps": budget.feature_steps}
        loaded = load_or_train_feature_net(
            train, test, cache_dir=config.cache_dir, progress=progress, **options
        )
        if loaded is None:  # the study's two datasets always have one
            raise ValueError(f"no feature network for data {config.data!r}")
        net, info = loaded
        self.feature_network = info.as_dict()
        self.extractor = ProjectFeatures(net)
        self.images: dict[str, Tensor] = {}
        self.features: dict[str, Tensor] = {}
        fitting, _ = config.datasets()  # the training split without the validation images
        self.train_images = torch.cat(list(iter_images(fitting, len(fitting), batch_size=250)))
        for split, dataset in (("validation", config.validation_dataset()), ("test", test)):
            count = (
                len(dataset) if budget.max_images is None else min(budget.max_images, len(dataset))
            )
            self.images[split] = torch.cat(list(iter_images(dataset, count, batch_size=250)))
            self.features[split] = extract_features(self.extractor, self.images[split].split(250))

    @torch.no_grad()
    def score(self, run_dir: Path, seed: int) -> dict[str, Any]:
        """``{"validation": ..., "test": ...}``: each split's L1, reconstruction FID, active
        units and, under ``"samplers"``, the sample scores of every name in :data:`SAMPLERS`
        (``"prior"`` is also kept as the split's ``"prior"``)."""
        from mixelbo import functional as F
        from mixelbo_reference.checkpoint import load_run
        from mixelbo_reference.metrics import l1_error
        from mixelbo_reference.sample_quality import (
            compare_sets,
            extract_features,
            fit_ex_post_samplers,
            frechet_distance,
            latent_samples,
        )

        vae, _, _ = load_run(run_dir)
        latent_dim = int(vae.latent_dim)
        codes = torch.cat([vae.encode(x)[0] for x in self.train_images.split(250)])
        if not codes.isfinite().all():
            raise NonFiniteSamplesError(f"{run_dir.name}: non-finite posterior means")
        samplers = fit_ex_post_samplers(codes.double(), seed=seed)
        record: dict[str, Any] = {}
        for split, images in self.images.items():
            mus, l1s, reconstructions = [], [], []
            for x in images.split(250):
                mu, _ = vae.encode(x)
                x_hat = vae.decode(mu).float()
                mus.append(mu.double())
                l1s.append(l1_error(x, x_hat))
                reconstructions.append(x_hat)
            recon = extract_features(self.extractor, reconstructions)
            scores: dict[str, Any] = {}
            for name in SAMPLERS:
                generator = torch.Generator().manual_seed(seed + PRIOR_SEED_OFFSET)
                z = latent_samples(name, samplers, len(images), latent_dim, generator)
                decoded = (vae.decode(c.float()).float() for c in z.split(250))
                samples = extract_features(self.extractor, decoded)
                if not samples.isfinite().all():
                    raise NonFiniteSamplesError(
                        f"{run_dir.name}: non-finite decoded images ({split}, {name})"
                    )
                scores[name] = compare_sets(
                    self.features[split], samples, kid_subsets=KID_SUBSETS, seed=seed
                )
            if not recon.isfinite().all():
                raise NonFiniteSamplesError(f"{run_dir.name}: non-finite reconstructions ({split})")
            active = int(F.active_units(torch.cat(mus)))
            record[split] = {
                "images": len(images),
                "l1": float(torch.cat(l1s).mean()),
                "prior": scores["prior"],
                "samplers": scores,
                "reconstruction_fid": frechet_distance(self.features[split], recon),
                "active_units": active,
                "latent_dim": latent_dim,
                "collapsed": active < latent_dim / 2,
            }
        return record


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


SAMPLE_METRICS: tuple[str, ...] = ("fid", "kid_mean", "precision", "recall")
"""The sample scores summarised per sampler."""


def _metric(score: dict[str, Any], key: str, sampler: str = "prior") -> float:
    if key not in SAMPLE_METRICS:
        return float(score[key])
    scores = score.get("samplers", {"prior": score["prior"]}).get(sampler)
    return float(scores[key]) if scores is not None else math.nan


def _summary(point: Point, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over the seeds of a point, per split and metric.

    ``SPLIT_METRIC`` keys hold N(0, I)'s sample scores (and the reconstruction metrics),
    ``SPLIT_SAMPLER_METRIC`` those of every sampler of :data:`SAMPLERS`. Failed runs (a
    non-finite loss or non-finite samples) are counted in ``failed`` and left out of the means;
    a point whose runs all failed has NaN means (and is never chosen).
    """
    out: dict[str, Any] = {"family": point.family, "label": point.label, "gan": point.gan}
    scores = [s for s in runs if "failed" not in s]
    out["seeds"] = len(runs)
    out["failed"] = len(runs) - len(scores)
    for split in ("validation", "test"):
        for key in ("l1", *SAMPLE_METRICS, "active_units"):
            out[f"{split}_{key}"] = _mean_sd([_metric(s[split], key) for s in scores])
        for sampler in SAMPLERS:
            for key in SAMPLE_METRICS:
                out[f"{split}_{sampler}_{key}"] = _mean_sd(
                    [_metric(s[split], key, sampler) for s in scores]
                )
        out[f"{split}_reconstruction_fid"] = _mean_sd(
            [float(s[split]["reconstruction_fid"]) for s in scores]
        )
    collapsed = [float(s["test"]["collapsed"]) for s in scores]
    out["collapse_rate"] = statistics.fmean(collapsed) if collapsed else math.nan
    return out


def _best(points: list[dict[str, Any]], family: str, sampler: str = "prior") -> dict[str, Any]:
    """The point of ``family`` with the lowest mean validation FID of ``sampler``'s samples."""
    candidates = [p for p in points if p["family"] == family and not p["gan"]]
    key = f"validation_{sampler}_fid"
    return min(candidates, key=lambda p: (not math.isfinite(p[key][0]), p[key][0]))


def _frontier(points: list[dict[str, Any]], x_key: str, y_key: str) -> list[dict[str, Any]]:
    """The points no other point beats on both means (lower L1 and lower FID), by L1."""
    rows = [p for p in points if math.isfinite(p[x_key][0]) and math.isfinite(p[y_key][0])]
    rows.sort(key=lambda p: (p[x_key][0], p[y_key][0]))
    frontier: list[dict[str, Any]] = []
    for row in rows:
        if not frontier or row[y_key][0] < frontier[-1][y_key][0]:
            frontier.append(row)
    return frontier


def at_l1(
    points: list[dict[str, Any]], family: str, split: str, sampler: str, l1: float
) -> dict[str, Any]:
    """``sampler``'s FID of ``family`` at reconstruction error ``l1``, on ``split``.

    Linear interpolation between the two neighbours (by L1) on the family's frontier of mean L1
    against mean FID (points beaten on both are left out); the sd is interpolated alike. When
    every frontier point reconstructs better than ``l1``, the frontier's last point (its lowest
    FID) is an upper bound (``"bound": "upper"``: the family reaches that FID at a lower L1,
    and the frontier's FID only falls as L1 grows); NaN when ``l1`` is below the frontier.

    Returns:
        ``{"fid": (mean, sd), "between": [label, label] or None, "l1_range": [lo, hi],
        "bound": None or "upper"}``.
    """
    x_key, y_key = f"{split}_l1", f"{split}_{sampler}_fid"
    rows = [p for p in points if p["family"] == family and not p["gan"]]
    frontier = _frontier(rows, x_key, y_key)
    result: dict[str, Any] = {
        "fid": (math.nan, math.nan), "between": None, "l1_range": None, "bound": None,
    }  # fmt: skip
    if not frontier or not math.isfinite(l1):
        return result
    result["l1_range"] = [frontier[0][x_key][0], frontier[-1][x_key][0]]
    if l1 > frontier[-1][x_key][0]:
        last = frontier[-1]
        return result | {"fid": last[y_key], "between": [last["label"]], "bound": "upper"}
    pairs = list(itertools.pairwise(frontier)) or [(frontier[0], frontier[0])]
    for low, high in pairs:
        x0, x1 = low[x_key][0], high[x_key][0]
        if x0 <= l1 <= x1:
            t = 0.0 if x1 == x0 else (l1 - x0) / (x1 - x0)
            mean = (1 - t) * low[y_key][0] + t * high[y_key][0]
            sd = (1 - t) * low[y_key][1] + t * high[y_key][1]
            return result | {"fid": (mean, sd), "between": [low["label"], high["label"]]}
    return result


def _headlines(points: list[dict[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    """Per family: its FID at the VAE's L1 with N(0, I) and with its best ex-post sampler
    (chosen on the validation split at the VAE's validation L1), both reported on test."""
    vae = next((p for p in points if p["label"] == "vae" and not p["gan"]), None)
    if vae is None:  # the beta-VAE family is not in the study
        return {}
    target = {split: vae[f"{split}_l1"][0] for split in ("validation", "test")}
    out: dict[str, Any] = {"vae_l1": target}
    for family in families:
        validation = {
            s: at_l1(points, family, "validation", s, target["validation"])["fid"][0]
            for s in EX_POST_SAMPLERS
        }
        finite = [s for s in EX_POST_SAMPLERS if math.isfinite(validation[s])]
        best = min(finite, key=validation.__getitem__) if finite else EX_POST_SAMPLERS[-1]
        out[family] = {
            "prior": at_l1(points, family, "test", "prior", target["test"]),
            "ex_post_sampler": best,
            "ex_post": at_l1(points, family, "test", best, target["test"]),
        }
    return out


def _headlines_by_seed(
    folder: Path, points: list[Point], seeds: Sequence[int], families: Sequence[str]
) -> dict[str, Any]:
    """The headline of each seed alone, and its spread over the seeds.

    For each seed, :func:`_headlines` of that seed's runs (each family's frontier at that
    seed's VAE L1, the ex-post sampler chosen on that seed's validation split); then per family
    the mean and sd over the seeds of those FIDs: the headline's own spread, paired by seed
    (the mean headline interpolates the frontier of mean scores instead).

    Returns:
        ``{"seeds": {seed: {family: {"prior": fid, "ex_post": fid, "ex_post_sampler": name}}},
        "prior": {family: (mean, sd)}, "ex_post": {family: (mean, sd)}}``.
    """
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        scored = [(p, _read_json(folder / "scores" / f"{p.name}-s{seed}.json")) for p in points]
        rows = [_summary(point, [score]) for point, score in scored if score is not None]
        headline = _headlines(rows, families)
        per_seed[str(seed)] = {
            family: {
                "prior": headline[family]["prior"]["fid"][0],
                "ex_post": headline[family]["ex_post"]["fid"][0],
                "ex_post_sampler": headline[family]["ex_post_sampler"],
            }
            for family in families
            if family in headline
        }
    spread = {
        kind: {
            family: _mean_sd(
                [entry[family][kind] for entry in per_seed.values() if family in entry]
            )
            for family in families
        }
        for kind in ("prior", "ex_post")
    }
    return {"seeds": per_seed} | spread


def _run_points(
    dataset: str,
    budget: Budget,
    points: list[Point],
    root: Path,
    scorer: list[_Scorer],
    timing: dict[str, float],
    progress: bool,
    device: str,
    train: bool = True,
) -> list[dict[str, Any]]:
    """Train and score every (point, seed) not scored yet that no other process has claimed;
    the summaries of the points whose seeds are all scored (``train=False``: train nothing and
    summarise every point with a scored seed).

    A run is claimed by an exclusive ``flock`` on ``ROOT/claims/RUN/.lock``
    (:class:`~mixelbo_reference.run_folder.RunLock`), held from before its training until its
    score is written: the workers of ``--jobs`` (or two ``mixelbo-study`` calls on one folder)
    each take the next free run, and a killed worker's claim ends with it."""
    from mixelbo_reference.run_folder import RunFolderInUseError, RunLock

    jobs = [(p, s) for s in budget.seeds for p in points]  # every point's first seed first
    summaries = []
    bar = tqdm(total=len(jobs), desc=f"study {dataset}", unit="run", disable=not progress)
    for point, seed in jobs:
        name = f"{point.name}-s{seed}"
        score_path = root / "scores" / f"{name}.json"
        if train and not score_path.is_file():
            try:
                claim = RunLock.acquire(root / "claims" / name, command="mixelbo-study")
            except RunFolderInUseError:  # another worker trains it
                claim = None
            if claim is not None:
                with claim:
                    if not score_path.is_file():  # scored while this one waited for its claim
                        config = _config(dataset, budget, point, seed, root / "runs" / name, device)
                        saved = _train_and_score(config, budget, name, scorer, timing, progress)
                        score_path.parent.mkdir(parents=True, exist_ok=True)
                        write_json(saved, score_path)
        bar.update()
    bar.close()
    for point in points:
        paths = [root / "scores" / f"{point.name}-s{seed}.json" for seed in budget.seeds]
        scores = [score for score in map(_read_json, paths) if score is not None]
        if len(scores) == len(paths) or (not train and scores):
            summaries.append(_summary(point, scores))
    return summaries


def _train_and_score(
    config: Any,
    budget: Budget,
    name: str,
    scorer: list[_Scorer],
    timing: dict[str, float],
    progress: bool,
) -> dict[str, Any]:
    """One run's scores, or ``{"failed": why}`` if its loss or its samples became non-finite."""
    from mixelbo_reference.compare import train_once
    from mixelbo_reference.train import NonFiniteLossError

    record: dict[str, Any] = {"run": name, "seed": config.seed}
    started = time.perf_counter()
    try:
        train_once(config)
    except NonFiniteLossError as error:
        return record | {"failed": str(error)}
    finally:
        timing["train_seconds"] += time.perf_counter() - started
    if not scorer:
        scorer.append(_Scorer(config, budget, progress))
        write_json(
            scorer[0].feature_network, Path(config.run_dir).parents[1] / "feature_network.json"
        )
    started = time.perf_counter()
    try:
        record |= scorer[0].score(Path(config.run_dir), config.seed)
    except NonFiniteSamplesError as error:
        return {"run": name, "seed": config.seed, "failed": str(error)}
    finally:
        timing["score_seconds"] += time.perf_counter() - started
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def _first_score(root: Path) -> dict[str, Any] | None:
    """A scored (not failed) run's record, for the image counts of the report."""
    for path in sorted((root / "scores").glob("*.json")):
        record = _read_json(path)
        if record is not None and "failed" not in record:
            return record
    return None


def _validate(
    root: Path, budget: str, datasets: Sequence[str], families: Sequence[str]
) -> list[str]:
    """Check the arguments of :func:`study` and mark ``root`` with the budget and its plan
    (refusing a folder that holds another); the families in :data:`FAMILIES`' order."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {list(BUDGETS)}; got {budget!r}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets or len(set(datasets)) != len(datasets):
        raise ValueError(f"datasets must be different names of {list(DATASETS)}; got {datasets}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families or len(set(families)) != len(families):
        raise ValueError(f"families must be different names of {list(FAMILIES)}; got {families}")
    root.mkdir(parents=True, exist_ok=True)
    marker = _read_json(root / "budget.json")
    planned = json.loads(json.dumps(BUDGETS[budget].__dict__))  # as budget.json stores it
    if marker is not None and (marker["budget"], marker["plan"]) != (budget, planned):
        raise ValueError(
            f"out {str(root)!r} holds a study of budget {marker['budget']!r} with plan "
            f"{marker['plan']}; got budget {budget!r} with plan {planned} (use another folder)"
        )
    write_json({"budget": budget, "plan": planned}, root / "budget.json")
    return [f for f in FAMILIES if f in families]


def study(
    out: str | os.PathLike[str],
    *,
    budget: str = "default",
    datasets: Sequence[str] = DEFAULT_DATASETS,
    families: Sequence[str] = FAMILIES,
    device: str = "cpu",
    progress: bool = True,
    report: bool = True,
    elapsed: float = 0.0,
    jobs: int = 1,
    stage: str = "all",
) -> dict[str, Any]:
    """Run (or finish) the study and write ``study.{md,html,json}`` into ``out``.

    Args:
        out: output folder (the runs go to ``OUT/DATASET/runs/``).
        budget: ``default``, ``small``, ``large`` or ``smoke`` (:data:`BUDGETS`).
        datasets: a subset of :data:`DATASETS`.
        families: a subset of :data:`FAMILIES`.
        device: training device (``cpu``, ``cuda``, ``auto``; the scoring runs on the CPU).
        progress: show progress bars.
        report: write ``study.json`` and the report (``False``: only the runs and scores, for
            the workers of ``mixelbo-study --jobs``).
        elapsed: wall seconds already spent on this call's work elsewhere (the workers),
            added to the study's total.
        jobs: how many worker processes trained the runs in parallel (for the report).
        stage: ``"all"``; ``"sweep"`` to stop after the points without the GAN term;
            ``"report"`` to train nothing and report the runs scored so far (a study in
            progress: its points' seeds are the scored ones).

    Returns:
        The study's summary (what ``study.json`` holds).

    Raises:
        ValueError: on an unknown budget, dataset or family, or an ``out`` holding a study of
            another budget or plan.
    """
    families = _validate(Path(out), budget, datasets, families)
    points = [p for p in sweep_points() if p.family in families]
    from mixelbo_reference.config import MODEL_CONFIGS

    plan = BUDGETS[budget]
    root = Path(out)
    started = time.perf_counter()
    timing = {"train_seconds": 0.0, "score_seconds": 0.0}
    results: dict[str, Any] = {}
    by_label = {p.label: p for p in points}
    for dataset in datasets:
        folder = root / dataset
        scorer: list[_Scorer] = []
        train = stage != "report"
        run = (dataset, plan, points, folder, scorer, timing, progress, device, train)
        summaries = _run_points(*run)
        if stage == "sweep" or (train and len(summaries) < len(points)) or not summaries:
            continue  # a worker: the runs other workers claimed are not all scored yet
        present = [f for f in families if any(p["family"] == f for p in summaries)]
        chosen = {family: _best(summaries, family) for family in present}
        with_gan = [by_label[chosen[f]["label"]].with_gan() for f in present]
        if plan.gan_stage:
            run = (dataset, plan, with_gan, folder, scorer, timing, progress, device, train)
            summaries += _run_points(*run)
        first = _first_score(folder)
        results[dataset] = {
            "holdout": _holdout(dataset, plan),
            "validation_images": first["validation"]["images"] if first else None,
            "test_images": first["test"]["images"] if first else None,
            "feature_network": _read_json(folder / "feature_network.json"),
            "scored_runs": len(list((folder / "scores").glob("*.json"))),
            "planned_runs": (len(points) + (len(with_gan) if plan.gan_stage else 0))
            * len(plan.seeds),
            "chosen": {family: chosen[family]["label"] for family in present},
            "chosen_by_sampler": {
                sampler: {family: _best(summaries, family, sampler)["label"] for family in present}
                for sampler in SAMPLERS
            },
            "headline": _headlines(summaries, present),
            "headline_by_seed": _headlines_by_seed(folder, points, plan.seeds, present),
            "points": summaries,
        }
        if report:  # the figures (a worker of --jobs leaves them to the merging call)
            _figures(root, dataset, summaries)
            shown = [by_label[chosen[f]["label"]] for f in present]
            results[dataset]["samples_figure"] = _sample_grid(
                root, dataset, [*shown, *(with_gan if plan.gan_stage else [])], plan
            )
    seconds = time.perf_counter() - started + elapsed
    previous = _read_json(root / "study.json") if report else None
    total = seconds + (previous["seconds_total"] if previous else 0.0)
    summary = {
        "budget": budget,
        "families": families,
        "plan": plan.__dict__,
        "threads": torch.get_num_threads(),
        "jobs": jobs,
        "device": device,
        "latent_dim": MODEL_CONFIGS[plan.model].latent_dim,
        "seconds_this_call": round(seconds, 1),
        "seconds_total": round(total, 1),
        "train_seconds_this_call": round(timing["train_seconds"], 1),
        "score_seconds_this_call": round(timing["score_seconds"], 1),
        "datasets": results,
    }
    if report:
        write_json(summary, root / "study.json")
        write_report(root, "mixelbo objective study", _blocks(summary), name="study")
    return summary


def _run_workers(args: argparse.Namespace, jobs: int) -> float:
    """``jobs`` ``mixelbo-study`` processes, each training the next run no other one has claimed
    with ``args.threads // jobs`` torch threads, its log in ``OUT/worker-K.log``: one
    round for the sweep, and one for the GAN stage if the budget has it (its points are chosen
    from the whole sweep); a progress bar over the finished scores. The wall seconds taken."""
    import subprocess

    threads = max(1, args.threads // jobs)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    plan = BUDGETS[args.budget]
    per_dataset = len(plan.seeds) * (
        len([p for p in sweep_points() if p.family in args.families])
        + (len(args.families) if plan.gan_stage else 0)
    )
    started = time.perf_counter()
    bar = tqdm(
        total=per_dataset * len(args.datasets), desc="study", unit="run",
        disable=args.no_progress,
    )  # fmt: skip
    for stage in ("sweep", "all") if plan.gan_stage else ("sweep",):
        running = []
        try:
            for k in range(jobs):
                command = [
                    sys.executable, "-m", "mixelbo_reference.study", "--out", args.out,
                    "--budget", args.budget, "--datasets", *args.datasets, "--families",
                    *args.families, "--device", args.device, "--threads", str(threads),
                    "--jobs", "1", "--no-progress", "--no-report",
                    "--stage", stage,
                ]  # fmt: skip
                log = (root / f"worker-{k}.log").open("a")
                env = os.environ | {"OMP_NUM_THREADS": str(threads)}
                process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
                running.append((k, log, process))
            while running:
                time.sleep(2.0)
                bar.n = sum(len(list((root / d / "scores").glob("*.json"))) for d in args.datasets)
                bar.refresh()
                for job in [job for job in running if job[2].poll() is not None]:
                    running.remove(job)
                    job[1].close()
                    if job[2].returncode != 0:
                        raise RuntimeError(
                            f"worker {job[0]} failed (exit {job[2].returncode}); see "
                            f"{root / f'worker-{job[0]}.log'}"
                        )
        finally:  # an error or an interruption stops the other workers (their runs resume)
            for _, log, process in running:
                process.terminate()
                process.wait()
                log.close()
    bar.close()
    return time.perf_counter() - started


_COLOURS = {
    "beta-vae": "tab:blue", "wae-mmd": "tab:green", "eq22": "tab:red", "eq22-full": "tab:purple",
}  # fmt: skip


def _save(figure: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    os.replace(temporary, path)


def _figures(root: Path, dataset: str, points: list[dict[str, Any]]) -> None:
    """``DATASET_frontier.png`` (test L1 against FID) and ``DATASET_precision_recall.png``,
    one panel per sampler of :data:`SAMPLERS`.

    The frontier leaves out points whose test L1 is over twice the median point's (one that has
    given up reconstruction would squash the others into a corner) and names them in a note.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    median_l1 = statistics.median(p["test_l1"][0] for p in points)
    for name, keys, (x_label, y_label) in (
        ("frontier", ("test_l1", "test_{}_fid"), ("test L1 (reconstruction)", "FID")),
        ("precision_recall", ("test_{}_recall", "test_{}_precision"), ("recall", "precision")),
    ):
        shown = [p for p in points if name != "frontier" or p["test_l1"][0] <= 2 * median_l1]
        figure, panels = plt.subplots(1, len(SAMPLERS), figsize=(6 * len(SAMPLERS), 5))
        for axes, sampler in zip(panels, SAMPLERS, strict=True):
            x_key, y_key = (key.format(sampler) for key in keys)
            off_scale = [
                f"{p['label']} (L1 {format_number(p[x_key][0])}, FID {format_number(p[y_key][0])})"
                for p in points
                if p not in shown
            ]
            if off_scale:
                axes.text(
                    0.98, 0.02, "off scale: " + ", ".join(off_scale), transform=axes.transAxes,
                    ha="right", fontsize=7,
                )  # fmt: skip
            for family in FAMILIES:
                for gan in (False, True):
                    rows = [p for p in shown if p["family"] == family and p["gan"] == gan]
                    if not rows:
                        continue
                    rows.sort(key=lambda p: p[x_key][0])
                    axes.errorbar(
                        [p[x_key][0] for p in rows],
                        [p[y_key][0] for p in rows],
                        xerr=[p[x_key][1] for p in rows],
                        yerr=[p[y_key][1] for p in rows],
                        color=_COLOURS[family],
                        marker="s" if gan else "o",
                        linestyle="none" if gan else "-",
                        markerfacecolor="none" if gan else _COLOURS[family],
                        capsize=3,
                        label=f"{family} + GAN (best)" if gan else family,
                    )
                    for p in rows:
                        axes.annotate(
                            p["label"] + (" +GAN" if gan else ""),
                            (p[x_key][0], p[y_key][0]),
                            fontsize=6,
                            xytext=(3, 3),
                            textcoords="offset points",
                        )
            axes.set_xlabel(x_label)
            axes.set_ylabel(y_label)
            axes.set_title(SAMPLER_LABELS[sampler], fontsize=10)
            axes.grid(alpha=0.3)
            axes.legend(fontsize=8)
        figure.suptitle(f"{dataset}: mean +- sd over seeds, test split")
        _save(figure, root / f"{dataset}_{name}.png")
        plt.close(figure)


def _kept_run(folder: Path, point: Point, seeds: Sequence[int]) -> str | None:
    """The first of ``point``'s scored runs whose folder is kept (a study resumed from committed
    scores lacks the folders of their runs), or ``None``."""
    for seed in seeds:
        name = f"{point.name}-s{seed}"
        record = _read_json(folder / "scores" / f"{name}.json")
        if record is not None and "failed" not in record and (folder / "runs" / name).is_dir():
            return name
    return None


@torch.no_grad()
def _sample_grid(root: Path, dataset: str, points: list[Point], plan: Budget) -> bool:
    """``DATASET_samples.png``: samples of each point's first scored run whose folder is kept, a
    row for N(0, I) and one for each ex-post sampler (fitted to the run's training codes as the
    scores are).

    Points with no such run are left out; ``False`` (and no figure) if none has one.
    """
    from mixelbo_reference.checkpoint import load_run
    from mixelbo_reference.features import iter_images
    from mixelbo_reference.figures import save_image_grid
    from mixelbo_reference.sample_quality import fit_ex_post_samplers, latent_samples

    rows: list[Tensor] = []
    labels: list[str] = []
    for point in points:
        name = _kept_run(root / dataset, point, plan.seeds)
        if name is None:
            continue
        vae, _, config = load_run(root / dataset / "runs" / name)
        fitting, _ = config.datasets()
        images = torch.cat(list(iter_images(fitting, len(fitting), batch_size=250)))
        codes = torch.cat([vae.encode(x)[0] for x in images.split(250)])
        samplers = fit_ex_post_samplers(codes.double(), seed=plan.seeds[0])
        for sampler in SAMPLERS:
            generator = torch.Generator().manual_seed(PRIOR_SEED_OFFSET)
            z = latent_samples(sampler, samplers, 10, int(vae.latent_dim), generator)
            rows.append(vae.decode(z.float()).float())
            labels.append(f"{name}, {sampler}")
    if not rows:
        return False
    save_image_grid(
        torch.stack(rows),
        root / f"{dataset}_samples.png",
        title=f"{dataset}: samples of the chosen points",
        row_labels=labels,
    )
    return True


def _cell(pair: tuple[float, float]) -> str:
    return f"{format_number(pair[0])} +- {format_number(pair[1])}"


def _headline_cell(entry: dict[str, Any]) -> str:
    if entry["between"] is None:
        lo_hi = entry["l1_range"]
        span = f"{format_number(lo_hi[0])}-{format_number(lo_hi[1])}" if lo_hi else "none"
        return f"n/a (frontier L1 {span})"
    bound = "<= " if entry.get("bound") == "upper" else ""
    return bound + _cell(entry["fid"]) + f" ({' / '.join(entry['between'])})"


def _seed_ex_post_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    return f"{format_number(entry['ex_post'])} ({entry['ex_post_sampler']})"


def _blocks(summary: dict[str, Any]) -> list[Any]:
    plan = summary["plan"]
    blocks: list[Any] = [
        Paragraph(
            f"Budget `{summary['budget']}`: model `{plan['model']}`, {plan['steps']} steps of "
            f"{plan['batch_size']} images at Adam {LEARNING_RATE:g}, seeds {plan['seeds']}, "
            f"latent dim {summary['latent_dim']}, trained on `{summary['device']}`, "
            f"{summary['jobs']} worker(s) with {summary['threads']} CPU thread(s) each. Wall "
            f"time: {summary['seconds_total']} s in all ({summary['seconds_this_call']} s in "
            f"the last call, of which {summary['train_seconds_this_call']} s training and "
            f"{summary['score_seconds_this_call']} s scoring; finished runs are skipped)."
        ),
        Paragraph(
            "Every point is trained without the adversarial term"
            + (
                "; the best point of each family (lowest mean N(0, I) FID on the validation "
                "split) is trained again with the PatchGAN term (`+ GAN`)"
                if plan.get("gan_stage")
                else ""
            )
            + ". The validation split is held out of the training split and never trained "
            "on; the test split is only reported. FID, KID, precision and recall (k = 3) "
            "compare as many samples as split images with the split, in the features of the "
            "project's network for the dataset; FID is biased upward at small counts, so it "
            "compares only within a dataset. Samples come from N(0, I) (`prior`) and from two "
            "ex-post samplers fitted to the posterior means of the run's training split: a "
            "full-covariance Gaussian (`gaussian`) and a 10-component full-covariance Gaussian "
            "mixture (`gmm`). Collapse: fewer than half of the latent units active (variance "
            "of the posterior mean > 0.01)."
        ),
    ]
    for dataset, result in summary["datasets"].items():
        net = result["feature_network"] or {}
        blocks += [
            Heading(f"{dataset}"),
            Paragraph(
                f"Validation: the last {result['holdout']} training images "
                f"({result['validation_images']} scored); test: {result['test_images']} images. "
                f"Feature network: `{net.get('task')}` on `{net.get('dataset')}`, "
                f"{net.get('metric')} {format_number(net.get('score'))}. Chosen on validation "
                "(lowest N(0, I) FID): "
                + ", ".join(f"{f}: `{label}`" for f, label in result["chosen"].items())
                + "."
            ),
        ]
        headline = result.get("headline") or {}
        if headline:
            vae_l1 = headline["vae_l1"]
            blocks += [
                Paragraph(
                    "Headline: each family's test FID at the VAE's test L1 "
                    f"({format_number(vae_l1['test'])}), interpolated on its frontier of mean "
                    "L1 against mean FID (between the two points named; sd interpolated "
                    "alike), with N(0, I) and with the ex-post sampler chosen on validation; "
                    "`<=`: every point of the family reconstructs better than the VAE, and the "
                    "named point's FID bounds the family's at the VAE's L1."
                ),
                Table(
                    ["family", "FID, N(0, I)", "best ex-post sampler", "FID, ex-post"],
                    [
                        [
                            family,
                            _headline_cell(entry["prior"]),
                            entry["ex_post_sampler"],
                            _headline_cell(entry["ex_post"]),
                        ]
                        for family, entry in headline.items()
                        if family != "vae_l1"
                    ],
                ),
            ]
        by_seed = result.get("headline_by_seed") or {}
        if by_seed.get("seeds"):
            seeds = list(by_seed["seeds"])
            blocks += [
                Paragraph(
                    "The same headline for each seed alone (its runs' frontier at its VAE's "
                    "L1), then the mean and sd over the seeds: the headline's own spread."
                ),
                Table(
                    [
                        "family",
                        *(f"N(0, I), seed {seed}" for seed in seeds),
                        "N(0, I) mean +- sd",
                        *(f"ex-post, seed {seed}" for seed in seeds),
                        "ex-post mean +- sd",
                    ],
                    [
                        [
                            family,
                            *(
                                format_number(
                                    by_seed["seeds"][seed].get(family, {}).get("prior", math.nan)
                                )
                                for seed in seeds
                            ),
                            _cell(by_seed["prior"][family]),
                            *(
                                _seed_ex_post_cell(by_seed["seeds"][seed].get(family))
                                for seed in seeds
                            ),
                            _cell(by_seed["ex_post"][family]),
                        ]
                        for family in by_seed["prior"]
                    ],
                ),
            ]
        blocks += [
            Figure(f"{dataset}_frontier.png", f"{dataset}: test L1 against FID, per sampler"),
            Figure(f"{dataset}_precision_recall.png", f"{dataset}: precision against recall"),
        ]
        if result.get("samples_figure"):
            blocks.append(
                Figure(
                    f"{dataset}_samples.png",
                    f"{dataset}: samples of the chosen points (first kept run), a row per sampler",
                )
            )
        chosen = result["chosen"]
        if result["scored_runs"] < result["planned_runs"]:
            blocks.append(
                Paragraph(
                    f"**In progress: {result['scored_runs']} of {result['planned_runs']} runs "
                    "scored**; each point's `seeds` column counts its scored seeds."
                )
            )
        blocks.append(
            Table(
                [
                    "family",
                    "point",
                    "GAN",
                    "seeds",
                    "val. FID",
                    "test L1",
                    *(f"test FID {s}" for s in SAMPLERS),
                    *(f"prec. / rec. {s}" for s in SAMPLERS),
                    "test KID",
                    "recon. FID",
                    "active units",
                    "collapse rate",
                    "failed runs",
                ],
                [
                    [
                        p["family"],
                        p["label"] + (" (chosen)" if chosen.get(p["family"]) == p["label"] else ""),
                        p["gan"],
                        p["seeds"],
                        _cell(p["validation_fid"]),
                        _cell(p["test_l1"]),
                        *(_cell(p[f"test_{s}_fid"]) for s in SAMPLERS),
                        *(
                            f"{format_number(p[f'test_{s}_precision'][0])} / "
                            f"{format_number(p[f'test_{s}_recall'][0])}"
                            for s in SAMPLERS
                        ),
                        _cell(p["test_kid_mean"]),
                        _cell(p["test_reconstruction_fid"]),
                        _cell(p["test_active_units"]),
                        p["collapse_rate"],
                        p["failed"],
                    ]
                    for p in result["points"]
                ],
            )
        )
    return blocks


def build_parser() -> argparse.ArgumentParser:
    """The ``mixelbo-study`` command line."""
    parser = argparse.ArgumentParser(
        prog="mixelbo-study",
        description="The objective study: beta-VAE, WAE-MMD and eq. 22 with the diagonal and "
        "the full-covariance KL_G, each along its own weight, over seeds, scored with N(0, I) "
        "and with ex-post samplers, weights chosen on a validation split; one report.",
    )
    parser.add_argument("--out", default="reports/study", help="output folder")
    parser.add_argument(
        "--budget",
        default="default",
        choices=list(BUDGETS),
        help="default: cpu-32 (grey on MNIST), 3000 steps, 3 seeds, 54 runs; small: issue "
        "11's 800 steps with the GAN stage; large: 1500 steps with the GAN stage (for "
        "--device cuda); smoke: seconds, for tests",
    )
    parser.add_argument(
        "--datasets", nargs="+", default=list(DEFAULT_DATASETS), choices=DATASETS,
        help="datasets",
    )  # fmt: skip
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="families"
    )
    parser.add_argument(
        "--device", default="cpu", help="training device: cpu, cuda, cuda:N or auto"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in all")
    parser.add_argument(
        "--jobs", type=int, default=2,
        help="runs trained at once, in worker processes that share --threads (the default: "
        "two workers of one thread each)",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true",
        help="train nothing: write the report of the runs scored so far (a study in progress)",
    )  # fmt: skip
    parser.add_argument("--stage", default="all", choices=("all", "sweep"), help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixelbo-study``."""
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        print(f"mixelbo-study: error: --threads must be >= 1; got {args.threads}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"mixelbo-study: error: --jobs must be >= 1; got {args.jobs}", file=sys.stderr)
        return 2
    jobs = min(args.jobs, args.threads)
    torch.set_num_threads(args.threads if jobs == 1 else max(1, args.threads // jobs))
    try:
        elapsed = 0.0
        if jobs > 1 and not args.report_only:
            _validate(Path(args.out), args.budget, args.datasets, args.families)
            elapsed = _run_workers(args, jobs)
        summary = study(
            args.out,
            budget=args.budget,
            datasets=args.datasets,
            families=args.families,
            device=args.device,
            progress=not args.no_progress,
            report=not args.no_report,
            elapsed=elapsed,
            jobs=jobs,
            stage="report" if args.report_only else args.stage,
        )
    except ValueError as error:
        print(f"mixelbo-study: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a worker failed
        print(f"mixelbo-study: error: {error}", file=sys.stderr)
        return 1
    for dataset, result in summary["datasets"].items():
        print(f"{dataset}: chosen {result['chosen']}")
    print(f"{summary['seconds_total']} s; report: {(Path(args.out) / 'study.html').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
