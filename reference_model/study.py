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
    """

    model: str
    steps: int
    batch_size: int
    seeds: tuple[int, ...]
    procedural_size: int
    max_images: int | None = None
    feature_steps: int | None = None


BUDGETS: dict[str, Budget] = {
    # 90 runs of cpu-32, the demo's model (two datasets x (12 points + 3 with GAN) x 3 seeds),
    # at about half the demo's steps: tiny-32 at 300 steps (this budget's first setting) did
    # not learn (every point at the mean image's L1, FID within noise of each other).
    "default": Budget("cpu-32", steps=800, batch_size=32, seeds=(0, 1, 2), procedural_size=2500),
    # The demo's model and steps (cpu-32, 1500 steps; not timed here): for --device cuda.
    "large": Budget("cpu-32", steps=1500, batch_size=32, seeds=(0, 1, 2), procedural_size=5000),
    # For tests: seconds.
    "smoke": Budget(
        "tiny-32",
        steps=2,
        batch_size=8,
        seeds=(0,),
        procedural_size=120,
        max_images=24,
        feature_steps=2,
    ),
}

DATASETS: tuple[str, ...] = ("mnist", "procedural")
"""``mnist`` (``--data mnist``) and ``procedural`` (the embedded dataset)."""

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


FAMILIES: tuple[str, ...] = ("beta-vae", "eq22", "wae-mmd")


def sweep_points() -> list[Point]:
    """The points trained without the adversarial term (12: 5 + 4 + 3).

    The eq. 22 family covers the three KL_G estimators: ``mixture-sample``,
    ``mixture-mixture`` (the recommended configuration) and ``authors-code``, which is the
    recommended configuration with the ``"means"`` estimator (the same objective, so it is
    not trained twice)."""
    points = [
        Point(
            "beta-vae",
            "vae" if beta == 1 else f"beta-vae-{beta:g}",
            (("objective", "vae"),) if beta == 1 else (("objective", "beta-vae"), ("beta", beta)),
        )
        for beta in (0.1, 0.3, 1.0, 3.0, 10.0)
    ]
    points += [
        Point("eq22", "paper", (("objective", "paper"),)),
        Point("eq22", "authors-code", (("objective", "authors-code"),)),
    ]
    # the recommended objective with each KL_G estimator; "means" is the authors-code preset
    points += [
        Point(
            "eq22",
            f"mixture-{variance}",
            (("objective", "mixture"), ("variance", variance)),
        )
        for variance in ("sample", "mixture")
    ]
    points += [
        Point("wae-mmd", f"wae-mmd-{weight:g}", (("objective", "wae-mmd"), ("mmd_weight", weight)))
        for weight in (10.0, 100.0, 1000.0)
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
    and as many prior samples as split images.
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
        for split, dataset in (("validation", config.validation_dataset()), ("test", test)):
            count = (
                len(dataset) if budget.max_images is None else min(budget.max_images, len(dataset))
            )
            self.images[split] = torch.cat(list(iter_images(dataset, count, batch_size=250)))
            self.features[split] = extract_features(self.extractor, self.images[split].split(250))

    @torch.no_grad()
    def score(self, run_dir: Path, split: str, seed: int) -> dict[str, Any]:
        from mixelbo import functional as F
        from mixelbo_reference.checkpoint import load_run
        from mixelbo_reference.metrics import l1_error
        from mixelbo_reference.sample_quality import (
            compare_sets,
            extract_features,
            frechet_distance,
        )

        vae, _, _ = load_run(run_dir)
        images = self.images[split]
        mus, l1s, reconstructions = [], [], []
        for x in images.split(250):
            mu, _ = vae.encode(x)
            x_hat = vae.decode(mu).float()
            mus.append(mu.double())
            l1s.append(l1_error(x, x_hat))
            reconstructions.append(x_hat)
        generator = torch.Generator().manual_seed(seed + PRIOR_SEED_OFFSET)
        z = torch.randn(len(images), int(vae.latent_dim), generator=generator)
        prior = extract_features(self.extractor, (vae.decode(c).float() for c in z.split(250)))
        recon = extract_features(self.extractor, reconstructions)
        if not (prior.isfinite().all() and recon.isfinite().all()):
            raise NonFiniteSamplesError(f"{run_dir.name}: non-finite decoded images ({split})")
        mu = torch.cat(mus)
        active = int(F.active_units(mu))
        prior_scores = compare_sets(self.features[split], prior, kid_subsets=KID_SUBSETS, seed=seed)
        return {
            "images": len(images),
            "l1": float(torch.cat(l1s).mean()),
            "prior": prior_scores,
            "reconstruction_fid": frechet_distance(self.features[split], recon),
            "active_units": active,
            "latent_dim": int(vae.latent_dim),
            "collapsed": active < int(vae.latent_dim) / 2,
        }


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _metric(score: dict[str, Any], key: str) -> float:
    return float(score["prior"][key] if key in score["prior"] else score[key])


def _summary(point: Point, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over the seeds of a point, per split and metric.

    Failed runs (a non-finite loss or non-finite samples) are counted in ``failed`` and left
    out of the means; a point whose runs all failed has NaN means (and is never chosen).
    """
    out: dict[str, Any] = {"family": point.family, "label": point.label, "gan": point.gan}
    scores = [s for s in runs if "failed" not in s]
    out["seeds"] = len(runs)
    out["failed"] = len(runs) - len(scores)
    for split in ("validation", "test"):
        for key in ("l1", "fid", "kid_mean", "precision", "recall", "active_units"):
            out[f"{split}_{key}"] = _mean_sd([_metric(s[split], key) for s in scores])
        out[f"{split}_reconstruction_fid"] = _mean_sd(
            [float(s[split]["reconstruction_fid"]) for s in scores]
        )
    collapsed = [float(s["test"]["collapsed"]) for s in scores]
    out["collapse_rate"] = statistics.fmean(collapsed) if collapsed else math.nan
    return out


def _best(points: list[dict[str, Any]], family: str) -> dict[str, Any]:
    """The point of ``family`` with the lowest mean validation prior-sample FID."""
    candidates = [p for p in points if p["family"] == family and not p["gan"]]
    return min(
        candidates,
        key=lambda p: (not math.isfinite(p["validation_fid"][0]), p["validation_fid"][0]),
    )


def _run_points(
    dataset: str,
    budget: Budget,
    points: list[Point],
    root: Path,
    scorer: list[_Scorer],
    timing: dict[str, float],
    progress: bool,
    device: str,
) -> list[dict[str, Any]]:
    """Train and score every (point, seed) not done yet; the per-point summaries."""
    jobs = [(p, s) for p in points for s in budget.seeds]
    summaries = []
    bar = tqdm(total=len(jobs), desc=f"study {dataset}", unit="run", disable=not progress)
    for point in points:
        scores = []
        for seed in budget.seeds:
            name = f"{point.name}-s{seed}"
            run_dir = root / "runs" / name
            score_path = root / "scores" / f"{name}.json"
            config = _config(dataset, budget, point, seed, run_dir, device)
            saved = _read_json(score_path)
            if saved is None:
                saved = _train_and_score(config, budget, name, scorer, timing, progress)
                score_path.parent.mkdir(parents=True, exist_ok=True)
                write_json(saved, score_path)
            scores.append(saved)
            bar.update()
        summaries.append(_summary(point, scores))
    bar.close()
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
        for split in ("validation", "test"):
            record[split] = scorer[0].score(Path(config.run_dir), split, config.seed)
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
    datasets: Sequence[str] = DATASETS,
    families: Sequence[str] = FAMILIES,
    device: str = "cpu",
    progress: bool = True,
    report: bool = True,
    elapsed: float = 0.0,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run (or finish) the study and write ``study.{md,html,json}`` into ``out``.

    Args:
        out: output folder (the runs go to ``OUT/DATASET/runs/``).
        budget: ``default``, ``large`` or ``smoke`` (:data:`BUDGETS`).
        datasets: a subset of :data:`DATASETS`.
        families: a subset of :data:`FAMILIES`.
        device: training device (``cpu``, ``cuda``, ``auto``; the scoring runs on the CPU).
        progress: show progress bars.
        report: write ``study.json`` and the report (``False``: only the runs and scores, for
            the workers of ``mixelbo-study --jobs``).
        elapsed: wall seconds already spent on this call's work elsewhere (the workers),
            added to the study's total.
        jobs: how many worker processes trained the datasets in parallel (for the report).

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
    for dataset in datasets:
        folder = root / dataset
        scorer: list[_Scorer] = []
        summaries = _run_points(dataset, plan, points, folder, scorer, timing, progress, device)
        chosen = {family: _best(summaries, family) for family in families}
        by_label = {p.label: p for p in points}
        with_gan = [by_label[chosen[f]["label"]].with_gan() for f in families]
        summaries += _run_points(dataset, plan, with_gan, folder, scorer, timing, progress, device)
        first = _first_score(folder)
        results[dataset] = {
            "holdout": _holdout(dataset, plan),
            "validation_images": first["validation"]["images"] if first else None,
            "test_images": first["test"]["images"] if first else None,
            "feature_network": _read_json(folder / "feature_network.json"),
            "chosen": {family: chosen[family]["label"] for family in families},
            "points": summaries,
        }
        if report:  # the figures (a worker of --jobs leaves them to the merging call)
            _figures(root, dataset, summaries)
            results[dataset]["samples_figure"] = _sample_grid(
                root, dataset, [*(by_label[chosen[f]["label"]] for f in families), *with_gan], plan
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
    """One ``mixelbo-study`` process per dataset, ``jobs`` at a time, each with
    ``args.threads // jobs`` torch threads and its log in ``OUT/DATASET.log``; a progress
    bar over the finished scores. The wall seconds they took."""
    import subprocess

    threads = max(1, args.threads // jobs)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    per_dataset = len(BUDGETS[args.budget].seeds) * (
        len([p for p in sweep_points() if p.family in args.families]) + len(args.families)
    )
    started = time.perf_counter()
    pending, running = list(args.datasets), []
    bar = tqdm(
        total=per_dataset * len(args.datasets), desc="study", unit="run",
        disable=args.no_progress,
    )  # fmt: skip
    try:
        while pending or running:
            while pending and len(running) < jobs:
                dataset = pending.pop(0)
                command = [
                    sys.executable, "-m", "mixelbo_reference.study", "--out", args.out,
                    "--budget", args.budget, "--datasets", dataset, "--families",
                    *args.families, "--device", args.device, "--threads", str(threads),
                    "--jobs", "1", "--no-progress", "--no-report",
                ]  # fmt: skip
                log = (root / f"{dataset}.log").open("w")
                env = os.environ | {"OMP_NUM_THREADS": str(threads)}
                process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
                running.append((dataset, log, process))
            time.sleep(2.0)
            bar.n = sum(len(list((root / d / "scores").glob("*.json"))) for d in args.datasets)
            bar.refresh()
            for job in [job for job in running if job[2].poll() is not None]:
                running.remove(job)
                job[1].close()
                if job[2].returncode != 0:
                    raise RuntimeError(
                        f"the {job[0]} worker failed (exit {job[2].returncode}); see "
                        f"{root / f'{job[0]}.log'}"
                    )
    finally:  # an error or an interruption stops the other workers (their runs resume)
        for _, log, process in running:
            process.terminate()
            process.wait()
            log.close()
    bar.close()
    return time.perf_counter() - started


_COLOURS = {"beta-vae": "tab:blue", "eq22": "tab:red", "wae-mmd": "tab:green"}


def _save(figure: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    os.replace(temporary, path)


def _figures(root: Path, dataset: str, points: list[dict[str, Any]]) -> None:
    """``DATASET_frontier.png`` (test L1 vs prior FID) and ``DATASET_precision_recall.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, (x_key, y_key), (x_label, y_label) in (
        ("frontier", ("test_l1", "test_fid"), ("test L1 (reconstruction)", "prior-sample FID")),
        ("precision_recall", ("test_recall", "test_precision"), ("recall", "precision")),
    ):
        figure, axes = plt.subplots(figsize=(7, 5))
        for family in FAMILIES:
            for gan in (False, True):
                rows = [p for p in points if p["family"] == family and p["gan"] == gan]
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
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(f"{dataset}: mean +- sd over seeds, test split")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        _save(figure, root / f"{dataset}_{name}.png")
        plt.close(figure)


@torch.no_grad()
def _sample_grid(root: Path, dataset: str, points: list[Point], plan: Budget) -> bool:
    """``DATASET_samples.png``: prior samples of the first seed's run of each point, a row each.

    Points whose first run failed are left out; ``False`` (and no figure) if all failed.
    """
    from mixelbo_reference.checkpoint import load_run
    from mixelbo_reference.figures import prior_samples, save_image_grid

    rows: list[Tensor] = []
    labels: list[str] = []
    for point in points:
        name = f"{point.name}-s{plan.seeds[0]}"
        record = _read_json(root / dataset / "scores" / f"{name}.json")
        if record is None or "failed" in record:
            continue
        labels.append(point.name)
        vae, _, _ = load_run(root / dataset / "runs" / name)
        generator = torch.Generator().manual_seed(PRIOR_SEED_OFFSET)
        rows.append(prior_samples(vae, int(vae.latent_dim), 1, 10, generator=generator)[0])
    if not rows:
        return False
    save_image_grid(
        torch.stack(rows),
        root / f"{dataset}_samples.png",
        title=f"{dataset}: prior samples, seed {plan.seeds[0]}",
        row_labels=labels,
    )
    return True


def _cell(pair: tuple[float, float]) -> str:
    return f"{format_number(pair[0])} +- {format_number(pair[1])}"


def _blocks(summary: dict[str, Any]) -> list[Any]:
    plan = summary["plan"]
    blocks: list[Any] = [
        Paragraph(
            f"Budget `{summary['budget']}`: model `{plan['model']}`, {plan['steps']} steps of "
            f"{plan['batch_size']} images at Adam {LEARNING_RATE:g}, seeds {plan['seeds']}, "
            f"latent dim {summary['latent_dim']}, trained on `{summary['device']}`, "
            f"{summary['jobs']} dataset(s) at a time with {summary['threads']} CPU thread(s) "
            "each. Wall time: {summary['seconds_total']} s in all "
            f"({summary['seconds_this_call']} s in the last call, of which "
            f"{summary['train_seconds_this_call']} s training and "
            f"{summary['score_seconds_this_call']} s scoring; finished runs are skipped)."
        ),
        Paragraph(
            "Every point is trained without the adversarial term; the best point of each "
            "family (lowest mean prior-sample FID on the validation split, held out of the "
            "training split and never trained on) is trained again with the PatchGAN term "
            "(`+ GAN`). The test split is only reported. FID, KID, precision and recall "
            "(k = 3) compare as many prior samples as split images with the split, in the "
            "features of the project's network for the dataset; FID is biased upward at small "
            "counts, so it compares only within a dataset. Collapse: fewer than half of the "
            "latent units active (variance of the posterior mean > 0.01)."
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
                f"{net.get('metric')} {format_number(net.get('score'))}. Chosen on validation: "
                + ", ".join(f"{f}: `{label}`" for f, label in result["chosen"].items())
                + "."
            ),
            Figure(f"{dataset}_frontier.png", f"{dataset}: test L1 vs prior-sample FID"),
            Figure(f"{dataset}_precision_recall.png", f"{dataset}: precision vs recall"),
        ]
        if result["samples_figure"]:
            blocks.append(
                Figure(
                    f"{dataset}_samples.png",
                    f"{dataset}: prior samples of the chosen points, without and with the GAN term",
                )
            )
        blocks += [
            Table(
                [
                    "family",
                    "point",
                    "GAN",
                    "seeds",
                    "val. FID",
                    "test L1",
                    "test FID",
                    "test KID",
                    "precision",
                    "recall",
                    "recon. FID",
                    "active units",
                    "collapse rate",
                    "failed runs",
                ],
                [
                    [
                        p["family"],
                        p["label"]
                        + (" (chosen)" if result["chosen"][p["family"]] == p["label"] else ""),
                        p["gan"],
                        p["seeds"],
                        _cell(p["validation_fid"]),
                        _cell(p["test_l1"]),
                        _cell(p["test_fid"]),
                        _cell(p["test_kid_mean"]),
                        _cell(p["test_precision"]),
                        _cell(p["test_recall"]),
                        _cell(p["test_reconstruction_fid"]),
                        _cell(p["test_active_units"]),
                        p["collapse_rate"],
                        p["failed"],
                    ]
                    for p in result["points"]
                ],
            ),
        ]
    return blocks


def build_parser() -> argparse.ArgumentParser:
    """The ``mixelbo-study`` command line."""
    parser = argparse.ArgumentParser(
        prog="mixelbo-study",
        description="The objective study: beta-VAE, the eq. 22 presets and KL_G variants, "
        "WAE-MMD, with and without the GAN term, over seeds, weights chosen on a validation "
        "split, on MNIST and the procedural data; one report.",
    )
    parser.add_argument("--out", default="reports/study", help="output folder")
    parser.add_argument(
        "--budget",
        default="default",
        choices=list(BUDGETS),
        help="default: cpu-32, 800 steps, 3 seeds, 90 runs (measured 45 min on 2 CPU cores "
        "with --jobs 2); large: cpu-32, 1500 steps, more procedural images (for --device "
        "cuda); smoke: seconds, for tests",
    )
    parser.add_argument(
        "--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="datasets"
    )
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="families"
    )
    parser.add_argument(
        "--device", default="cpu", help="training device: cpu, cuda, cuda:N or auto"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in all")
    parser.add_argument(
        "--jobs", type=int, default=2,
        help="datasets trained at once, in separate processes that share --threads (the "
        "default: the two datasets in parallel, one thread each)",
    )  # fmt: skip
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
    jobs = min(args.jobs, len(args.datasets), args.threads)
    torch.set_num_threads(args.threads if jobs == 1 else max(1, args.threads // jobs))
    try:
        elapsed = 0.0
        if jobs > 1:
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
