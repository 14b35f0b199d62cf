"""``mixelbo-compare``: train one model with several objectives, evaluate each, one report.

Every objective trains the same architecture on the same data with the same seed, batch size
and step budget (through :func:`mixelbo_reference.train.train`), then :func:`evaluate` runs on
each run. The output folder holds ``runs/LABEL/`` (the training runs), ``LABEL/`` (each run's
full report) and ``compare.md`` / ``compare.html`` / ``compare.json``: one side-by-side table
and a figure page (reconstructions, prior samples, FID / KID / precision / recall, Fig. 4-6 and
latent histograms per objective).

Objectives are written ``mixture``, ``paper``, ``authors-code``, ``vae`` or ``beta-vae=B``. A
run that already reached the step budget is not trained again, and one that was interrupted
resumes from its last checkpoint, so an interrupted comparison loses at most one checkpoint
interval.

Example::

    mixelbo-compare --config cpu-32 --data mnist --out reports/compare
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from mixelbo_reference.evaluate import data_label, evaluate, objective_label
from mixelbo_reference.report import Figure, Heading, Paragraph, Table, write_json, write_report
from mixelbo_reference.sample_quality import PRIOR_SAMPLERS

__all__ = [
    "DEFAULT_OBJECTIVES",
    "build_parser",
    "compare",
    "main",
    "parse_objective",
    "parse_settings",
    "train_once",
]

DEFAULT_OBJECTIVES: tuple[str, ...] = ("mixture", "paper", "vae", "beta-vae=0.1", "beta-vae=10")
"""The recommended and the printed eq. 22, the standard VAE and beta-VAE with beta < 1 and > 1."""


def parse_objective(spec: str) -> tuple[str, float]:
    """``"beta-vae=0.1"`` -> ``("beta-vae", 0.1)``; ``"mixture"`` -> ``("mixture", 1.0)``.

    Raises:
        ValueError: on an unknown objective or a beta that is not a positive number.
    """
    from mixelbo_reference.config import OBJECTIVES

    name, _, beta_text = spec.partition("=")
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {spec!r}")
    if name != "beta-vae":
        if beta_text:
            raise ValueError(f"only beta-vae takes a beta (beta-vae=B); got {spec!r}")
        return name, 1.0
    try:
        beta = float(beta_text)
    except ValueError:
        raise ValueError(
            f"beta-vae needs a numeric beta, e.g. beta-vae=0.1; got {spec!r}"
        ) from None
    if not beta > 0:
        raise ValueError(f"beta must be positive; got {spec!r}")
    return name, beta


def parse_settings(settings: Sequence[str]) -> dict[str, Any]:
    """``["gan_start_step=300", "data=/x"]`` -> ``{"gan_start_step": 300, "data": "/x"}``.

    Raises:
        ValueError: on an entry without ``=`` or a name that is not a ``TrainConfig`` field.
    """
    from mixelbo_reference.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    parsed: dict[str, Any] = {}
    for setting in settings:
        name, separator, text = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not separator or name not in known:
            raise ValueError(f"--set needs FIELD=VALUE with a TrainConfig field; got {setting!r}")
        try:
            parsed[name] = json.loads(text)
        except json.JSONDecodeError:
            parsed[name] = text
    return parsed


def _label(name: str, beta: float) -> str:
    return f"beta-vae-{beta:g}" if name == "beta-vae" else name


def train_once(config: Any) -> Path:
    """Train ``config`` unless its run folder already holds the final step; resume otherwise."""
    from mixelbo_reference.checkpoint import checkpoint_step, latest_checkpoint
    from mixelbo_reference.train import train

    run_dir = Path(config.run_dir)
    latest = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if latest is not None and checkpoint_step(latest) >= config.steps:
        return run_dir
    return train(config.replace(resume=latest is not None))


def compare(
    out: str | Path,
    *,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    preset: str = "cpu-32",
    overrides: dict[str, Any] | None = None,
    n_test: int | None = None,
    evaluation: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate every objective; write ``compare.{md,html,json}`` into ``out``.

    Args:
        out: output folder.
        objectives: objective specs (see :func:`parse_objective`).
        preset: the ``TrainConfig`` preset every run starts from.
        overrides: ``TrainConfig`` fields set for every run (steps, batch_size, data, ...).
        n_test: test images evaluated per run (default all).
        evaluation: other keyword arguments of :func:`~mixelbo_reference.evaluate.evaluate`
            for every run (e.g. ``{"sample_quality": False}``).
        progress: show progress bars.

    Returns:
        The metrics of each run, in the order of ``objectives``.

    Raises:
        ValueError: on an unknown objective, preset or config field, or duplicate objectives.
    """
    from mixelbo_reference.config import TrainConfig

    parsed = [parse_objective(spec) for spec in objectives]
    labels = [_label(name, beta) for name, beta in parsed]
    if not labels:
        raise ValueError("objectives must name at least one objective")
    if len(set(labels)) != len(labels):
        raise ValueError(f"objectives must be different; got {list(objectives)}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    started = time.perf_counter()
    for (name, beta), label in zip(parsed, labels, strict=True):
        config = TrainConfig.preset(
            preset,
            **{
                **(overrides or {}),
                "objective": name,
                "beta": beta,
                "run_dir": str(root / "runs" / label),
                "progress": progress,
            },
        )
        run_started = time.perf_counter()
        run_dir = train_once(config)
        train_seconds = time.perf_counter() - run_started
        metrics = evaluate(
            run_dir, root / label, n_test=n_test, device=str(config.device), progress=progress,
            **(evaluation or {}),
        )  # fmt: skip
        metrics["label"] = label
        metrics["train_seconds"] = round(train_seconds, 1)
        metrics["steps"] = config.steps
        results.append(metrics)
    summary = {
        "preset": preset,
        "overrides": overrides or {},
        "seconds": round(time.perf_counter() - started, 1),
        "runs": results,
    }
    write_json(summary, root / "compare.json")
    write_report(root, "mixelbo objective comparison", comparison_blocks(summary), name="compare")
    return results


def _probe_means(metrics: dict[str, Any]) -> tuple[float | str, float | str]:
    probe = metrics.get("probe") or []
    r2 = [p["score"] for p in probe if p["metric"] == "r2"]
    accuracy = [p["score"] for p in probe if p["metric"] == "accuracy"]
    return (
        sum(r2) / len(r2) if r2 else "n/a",
        sum(accuracy) / len(accuracy) if accuracy else "n/a",
    )


def comparison_blocks(summary: dict[str, Any]) -> list[Any]:
    """The side-by-side table and figure page of a comparison."""
    runs = summary["runs"]
    first = runs[0]
    rows = []
    for m in runs:
        rec, col, bim = m["reconstruction"], m["collapse"], m["bimodality"]
        r2, accuracy = _probe_means(m)
        rows.append(
            [
                objective_label(m),
                rec["l1"],
                rec["psnr_db"],
                rec["ssim"],
                f"{col['active_units']}/{col['latent_dim']}",
                col["mean_posterior_sigma"],
                col["kl_g_mixture_variance"],
                col["kl_i_per_image"],
                col["standard_kl_per_image"],
                f"{bim['bimodal_dims_z']}/{bim['latent_dim']}",
                r2,
                accuracy,
                m["train_seconds"],
            ]
        )
    blocks: list[Any] = [
        Paragraph(
            f"Model `{first['model']}`, data {data_label(first['data'])}, "
            f"{first['steps']} steps per objective (preset `{summary['preset']}`, overrides "
            f"`{summary['overrides']}`), each evaluated on {first['reconstruction']['images']} "
            f"test images; {summary['seconds']} s in all on `{first['device']}`."
        ),
        Heading("Side by side"),
        Paragraph(
            "L1, PSNR and SSIM of the reconstructions (posterior means decoded); active units "
            "(Burda et al., variance of the mean > 0.01); mean posterior sigma; KL_G (eq. 19, "
            "mixture variance, whole test split); KL_I (eq. 20) and the standard KL (eq. 10) "
            "per image; bimodal latent coordinates (test in each run's report); probe: mean "
            "held-out R^2 over continuous factors and mean accuracy over discrete ones."
        ),
        Table(
            [
                "objective",
                "L1",
                "PSNR (dB)",
                "SSIM",
                "active",
                "mean sigma",
                "KL_G",
                "KL_I",
                "KL (eq. 10)",
                "bimodal",
                "probe R^2",
                "probe acc.",
                "train s",
            ],
            rows,
        ),
        Heading("Reconstructions"),
    ]
    for m in runs:
        blocks.append(
            Figure(f"{m['label']}/reconstructions.png", f"{objective_label(m)}: reconstructions")
        )
    blocks.append(Heading("Samples from the prior"))
    for m in runs:
        blocks.append(Figure(f"{m['label']}/samples.png", f"{objective_label(m)}: prior samples"))
    blocks += sample_quality_comparison(runs)
    blocks.append(Heading("Variations (Fig. 4) and transitions (Fig. 5)"))
    for m in runs:
        blocks += [
            Figure(f"{m['label']}/fig4_variations.png", f"{objective_label(m)}: Fig. 4"),
            Figure(f"{m['label']}/fig5_transitions.png", f"{objective_label(m)}: Fig. 5"),
        ]
    blocks.append(Heading("Latent histograms (Fig. 6)"))
    for m in runs:
        blocks += [
            Figure(
                f"{m['label']}/fig6_joint_histogram.png", f"{objective_label(m)}: joint histogram"
            ),
            Figure(
                f"{m['label']}/latent_histograms.png",
                f"{objective_label(m)}: the 8 most active latent coordinates",
            ),
        ]
    blocks.append(
        Paragraph(
            "Each objective's full report (collapse histograms, probe, every metric) is in "
            "its own folder: " + ", ".join(f"`{m['label']}/report.html`" for m in runs) + "."
        )
    )
    return blocks


_SCORE_KEYS = ("fid", "kid_mean", "precision", "recall")
"""The sample-quality scores the comparison shows."""


def sample_quality_comparison(runs: Sequence[dict[str, Any]]) -> list[Any]:
    """FID, KID and precision/recall of each run's samples and reconstructions (the generated
    column: ``prior`` for z ~ N(0, I), ``gaussian`` and ``gmm`` for the ex-post samplers,
    ``reconstruction``)."""
    measured = [m for m in runs if (m.get("sample_quality") or {}).get("sets")]
    if not measured:
        return []
    first = measured[0]["sample_quality"]
    rows = []
    for m in measured:
        quality = m["sample_quality"]
        # metrics written before the ex-post samplers have the prior's row only
        generated = {**quality.get("by_sampler", {}), **quality["sets"]}
        rows += [
            [objective_label(m), kind, *(generated[kind][k] for k in _SCORE_KEYS)]
            for kind in (*PRIOR_SAMPLERS, "reconstruction")
            if kind in generated
        ]
    return [
        Heading("Sample quality"),
        Paragraph(
            f"Against {first['test_images']} test images, in the features of the project's "
            "network for this dataset (each run's report names it and its test quality). "
            f"Precision / recall: Kynkaanniemi et al. 2019, k = {first['pr_k']}. "
            "Generated: `prior`, z ~ N(0, I); `gaussian` and `gmm`, the ex-post full-covariance "
            "Gaussian and Gaussian mixture fitted to the posterior means of training images "
            f"(Ghosh et al. 2020); `reconstruction`, the test images'. {first['note']}"
        ),
        Table(["objective", "generated", "FID", "KID", "precision", "recall"], rows),
    ]


def build_parser() -> argparse.ArgumentParser:
    """The ``mixelbo-compare`` command line."""
    parser = argparse.ArgumentParser(
        prog="mixelbo-compare",
        description="Train the same model with several objectives on the same data and step "
        "budget, evaluate each (mixelbo-eval) and write one side-by-side report.",
    )
    parser.add_argument("--out", default="reports/compare", help="output folder")
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=list(DEFAULT_OBJECTIVES),
        help="mixture, paper, authors-code, vae or beta-vae=B (default: %(default)s)",
    )
    parser.add_argument("--config", default="cpu-32", help="TrainConfig preset of every run")
    parser.add_argument("--steps", type=int, default=None, help="steps per objective")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of every run")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of every run")
    parser.add_argument(
        "--data", default=None, help="mnist or an image folder (default: embedded dataset)"
    )
    parser.add_argument("--train-split", type=float, default=None, help="train count or fraction")
    parser.add_argument(
        "--procedural-size", type=int, default=None, help="images in the embedded dataset"
    )
    parser.add_argument("--cache-dir", default=None, help="cache of the embedded dataset")
    parser.add_argument("--no-gan", action="store_true", help="ablate the adversarial term")
    parser.add_argument("--device", default=None, help="training device (auto, cpu, cuda)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other TrainConfig field for every run, e.g. --set gan_start_step=300 "
        "(repeatable; VALUE is read as JSON, else as a string)",
    )
    parser.add_argument("--n-test", type=int, default=None, help="test images per evaluation")
    parser.add_argument(
        "--no-sample-quality", action="store_true", help="skip FID, KID and precision/recall"
    )
    parser.add_argument(
        "--feature-net-steps", type=int, default=None,
        help="training steps of the evaluation's feature network (default: mixelbo-eval's)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixelbo-compare``."""
    args = build_parser().parse_args(argv)
    fields = ("steps", "batch_size", "lr", "data", "procedural_size", "cache_dir", "device", "seed")
    overrides: dict[str, Any] = {
        f: getattr(args, f) for f in fields if getattr(args, f) is not None
    }
    if args.train_split is not None:
        overrides["train_split"] = args.train_split
    if args.no_gan:
        overrides["gan"] = False
    evaluation: dict[str, Any] = {"sample_quality": not args.no_sample_quality}
    if args.feature_net_steps is not None:
        evaluation["feature_net_steps"] = args.feature_net_steps
    try:
        overrides.update(parse_settings(args.set))
        results = compare(
            args.out,
            objectives=args.objectives,
            preset=args.config,
            overrides=overrides,
            n_test=args.n_test,
            evaluation=evaluation,
            progress=not args.no_progress,
        )
    except ValueError as error:
        print(f"mixelbo-compare: error: {error}", file=sys.stderr)
        return 2
    for m in results:
        rec, col = m["reconstruction"], m["collapse"]
        print(
            f"{objective_label(m):24s} L1 {rec['l1']:.4f}  PSNR {rec['psnr_db']:.2f}  "
            f"SSIM {rec['ssim']:.4f}  active {col['active_units']}/{col['latent_dim']}  "
            f"bimodal {m['bimodality']['bimodal_dims_z']}"
        )
    print(f"report: {(Path(args.out) / 'compare.html').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
