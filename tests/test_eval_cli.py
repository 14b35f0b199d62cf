"""mixelbo-eval and mixelbo-compare end to end on a tiny run trained for a few steps."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mixelbo_reference import figures
from mixelbo_reference.checkpoint import load_run
from mixelbo_reference.compare import main as compare_main
from mixelbo_reference.compare import parse_objective
from mixelbo_reference.config import TrainConfig
from mixelbo_reference.evaluate import main as eval_main
from mixelbo_reference.train import train

PROCEDURAL = 80  # 64 train / 16 test images


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-32 run trained for 3 steps on a small embedded dataset (once per module)."""
    root = tmp_path_factory.mktemp("tiny")
    config = TrainConfig.preset(
        "tiny-32",
        steps=3,
        run_dir=str(root / "run"),
        cache_dir=str(root / "cache"),
        procedural_size=PROCEDURAL,
        progress=False,
    )
    return train(config)


def test_figures_from_a_tiny_checkpoint_have_the_paper_geometry(tiny_run: Path) -> None:
    vae, _, config = load_run(tiny_run)
    size, latent = config.model_config.image_size, vae.latent_dim
    x = torch.rand(6, 3, size, size) * 2 - 1
    assert figures.reconstruction_grid(vae, x).shape == (2, 6, 3, size, size)
    assert figures.prior_samples(vae, latent, 6, 8).shape == (6, 8, 3, size, size)
    fig4 = figures.variation_grid(vae, x[0], dims=(0, 1))
    assert fig4.shape == (5, 5, 3, size, size)  # k in {-20, -10, 0, 10, 20} on both axes
    fig5 = figures.transition_grid(vae, x[:3], x[3:], steps=6)
    assert fig5.shape == (3, 6, 3, size, size)  # n = 6: a_k = k / 5
    mu, _ = vae.encode(x[:1])
    assert torch.allclose(fig4[2, 2], vae.decode(mu)[0], atol=1e-6)  # centre: k = 0, 0
    assert torch.allclose(fig5[0, 0], vae.decode(vae.encode(x[:1])[0])[0], atol=1e-6)


FAST_FEATURES = ["--feature-net-steps", "20"]  # the feature network: seconds, not its default


def test_mixelbo_eval_writes_the_report(tiny_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = [str(tiny_run), "--out", str(out), "--no-progress", "--pairs", "3", *FAST_FEATURES]
    assert eval_main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed and "prior samples: FID" in printed
    assert "ex-post gaussian samples: FID" in printed and "ex-post gmm samples: FID" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    test_images = PROCEDURAL // 5
    assert metrics["reconstruction"]["images"] == test_images
    assert metrics["bimodality"]["samples"] == test_images
    assert 0 <= metrics["bimodality"]["bimodal_dims_z"] <= 16
    assert metrics["collapse"]["latent_dim"] == 16
    assert len(metrics["collapse"]["kl_per_dim"]) == 16
    assert metrics["reconstruction"]["ssim"] <= 1.0
    probe = {p["name"]: p for p in metrics["probe"]}
    assert probe["shape"]["metric"] == "accuracy" and probe["x"]["metric"] == "r2"
    assert probe["object_hue"]["kind"] == "circular"
    # geometry of the rendered grids: white 2-px padding around 32x32 cells, scaled by matplotlib
    grids = ("samples", "samples_gaussian", "samples_gmm", "fig4_variations", "fig5_transitions")
    for name in ("reconstructions", *grids):
        assert Image.open(out / f"{name}.png").format == "PNG"
    for name in ("fig6_joint_histogram", "latent_histograms", "collapse"):
        assert (out / f"{name}.png").is_file()
    assert metrics["figures"]["fig6_images"] == test_images
    assert len(metrics["figures"]["fig5_pairs"]) == 3
    markdown = (out / "report.md").read_text()
    for link in ("fig4_variations.png", "fig5_transitions.png", "fig6_joint_histogram.png"):
        assert f"]({link})" in markdown
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 9  # with a sample grid per ex-post sampler
    # sample quality: a factor regressor trained on the 64 training images, 16 test images
    quality = metrics["sample_quality"]
    assert quality["skipped"] is None and quality["test_images"] == test_images
    network = quality["feature_network"]
    assert network["task"] == "procedural-factor-regressor" and network["train_images"] == 64
    assert network["metric"] == "test R^2" and network["steps"] == 20
    assert set(quality["sets"]) == {"prior", "reconstruction", "train"}
    for row in quality["sets"].values():
        assert row["images"] == test_images and row["kid_subset_size"] == test_images // 2
        for key in ("fid", "kid_mean", "kid_std"):
            assert math.isfinite(row[key])
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert quality["sets"]["prior"]["fid"] > quality["sets"]["train"]["fid"]
    assert "Sample quality (against the test split)" in markdown
    assert "| training images (real-data reference) | 16 |" in markdown
    # the ex-post samplers: fitted to the 64 training images' posterior means, scored beside
    # the prior (whose row is the same in both places)
    ex_post = metrics["ex_post_samplers"]
    assert ex_post["skipped"] is None and ex_post["fit_images"] == 64
    assert ex_post["gmm_components"] == 10 and ex_post["gmm_iterations"] >= 1
    by_sampler = quality["by_sampler"]
    assert list(by_sampler) == ["prior", "gaussian", "gmm"]
    assert by_sampler["prior"] == quality["sets"]["prior"]
    for row in by_sampler.values():
        assert row["images"] == test_images and math.isfinite(row["fid"])
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert by_sampler["gmm"]["fid"] != by_sampler["prior"]["fid"]
    for label in ("| ex-post Gaussian, z ~ N(m, S)", "| ex-post GMM, 10 full-covariance"):
        assert label in markdown
    assert "](samples_gmm.png)" in markdown and "](samples_gaussian.png)" in markdown


def test_a_run_with_a_validation_holdout_uses_the_whole_training_split(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for config in run.rglob("config.toml"):
        text = re.sub(r"^#? ?holdout = .*$", "", config.read_text(), flags=re.MULTILINE)
        config.write_text(text + "\nholdout = 16\n")
    out = tmp_path / "report"
    assert eval_main([str(run), "--out", str(out), "--no-progress", *FAST_FEATURES]) == 0
    quality = json.loads((out / "metrics.json").read_text())["sample_quality"]
    assert quality["feature_network"]["train_images"] == 64  # not 64 - 16


def test_mixelbo_eval_on_an_image_folder_skips_sample_quality(
    tiny_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(50):
        pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:02d}.png")
    out = tmp_path / "report"
    assert (
        eval_main([str(tiny_run), "--out", str(out), "--data", str(folder), "--no-progress"]) == 0
    )
    quality = json.loads((out / "metrics.json").read_text())["sample_quality"]
    assert quality["feature_network"] is None
    assert "--feature-extractor-weights-path" in quality["skipped"]
    assert "FID, KID and precision/recall skipped" in (out / "report.md").read_text()
    missing = ["--feature-extractor-weights-path", str(tmp_path / "none.pth")]
    assert eval_main([str(tiny_run), "--out", str(out), "--no-progress", *missing]) == 2


def test_mixelbo_eval_default_folder_and_chosen_dims(tiny_run: Path) -> None:
    checkpoint = next((tiny_run / "checkpoints").iterdir())
    argv = [str(checkpoint), "--no-progress", "--fig4-dims", "3", "5", "--n-test", "10"]
    assert eval_main([*argv, "--fig6-dims", "2", "7", "--no-sample-quality"]) == 0
    metrics = json.loads((tiny_run / f"report-{checkpoint.name}" / "metrics.json").read_text())
    assert metrics["figures"]["fig4_dims"] == [3, 5] and metrics["figures"]["fig6_dims"] == [2, 7]
    assert metrics["reconstruction"]["images"] == 10
    assert metrics["sample_quality"]["skipped"] == "not requested (--no-sample-quality)"


def test_mixelbo_eval_rejects_bad_arguments(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert eval_main([str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "neither a run folder nor a checkpoint" in capsys.readouterr().err
    assert eval_main([str(tiny_run), "--fig4-dims", "1", "1", "--no-progress"]) == 2
    assert "fig4_dims must be two different latent indices" in capsys.readouterr().err


def test_parse_objective() -> None:
    assert parse_objective("mixture") == ("mixture", 1.0)
    assert parse_objective("beta-vae=0.25") == ("beta-vae", 0.25)
    for bad in ("beta-vae", "beta-vae=x", "beta-vae=-1", "vae=2", "ae"):
        with pytest.raises(ValueError):
            parse_objective(bad)


def test_mixelbo_compare_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "compare"
    argv = ["--out", str(out), "--config", "tiny-32", "--steps", "2", "--no-progress"]
    argv += ["--procedural-size", str(PROCEDURAL), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--feature-net-steps", "20"]
    assert compare_main(argv) == 0  # default: mixture, paper, vae, beta < 1, beta > 1
    summary = json.loads((out / "compare.json").read_text())
    labels = [run["label"] for run in summary["runs"]]
    assert labels == ["mixture", "paper", "vae", "beta-vae-0.1", "beta-vae-10"]
    assert [(run["objective"], run["beta"]) for run in summary["runs"]][3:] == [
        ("beta-vae", 0.1),
        ("beta-vae", 10.0),
    ]
    table = (out / "compare.md").read_text()
    for label in ("| mixture |", "| vae |", "| beta-vae (beta=0.1) |", "| beta-vae (beta=10) |"):
        assert label in table
    assert "FID" in table and table.count("| prior |") == 5  # sample quality per run
    assert table.count("| gaussian |") == 5 and table.count("| gmm |") == 5  # ex-post samplers
    # per run: reconstructions, prior samples, Fig. 4, Fig. 5, Fig. 6, latent histograms
    assert (out / "compare.html").read_text().count("data:image/png;base64,") == 5 * 6
    for label in labels:
        assert (out / label / "report.html").is_file()
        assert (out / "runs" / label / "checkpoints").is_dir()
    assert str(out / "compare.html") in capsys.readouterr().out
    # a second call finds every run finished and only re-evaluates
    assert compare_main([*argv, "--objectives", "mixture", "--no-sample-quality"]) == 0
    again = json.loads((out / "compare.json").read_text())
    assert [run["label"] for run in again["runs"]] == ["mixture"]
    assert again["runs"][0]["train_seconds"] < 1.0
