"""Figure builders and the report writer, with a stand-in model whose decoder shows its input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from mixelbo_reference import figures
from mixelbo_reference.report import Figure, Heading, Paragraph, Table, write_json, write_report

LATENT = 6
SIGMA = 0.5


class LatentEcho(nn.Module):
    """encode: mu = the first LATENT pixels, sigma = 0.5; decode: z shown as a 1 x LATENT image."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = x.flatten(1)[:, :LATENT]
        return mu, torch.full_like(mu, math.log(SIGMA**2))

    def decode(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], 1, 1, LATENT)


def _images(count: int) -> Tensor:
    return torch.arange(count * LATENT, dtype=torch.float64).reshape(count, 1, 1, LATENT) / 100


def test_variation_grid_moves_two_coordinates_by_k_sigma() -> None:
    x = _images(1)[0]
    grid = figures.variation_grid(LatentEcho(), x, dims=(1, 4))
    assert grid.shape == (5, 5, 1, 1, LATENT)
    mu = x.flatten()
    for r, k_row in enumerate(figures.FIG4_STEPS):
        for c, k_col in enumerate(figures.FIG4_STEPS):
            expected = mu.clone()
            expected[1] = mu[1] + k_col * SIGMA  # horizontal axis: dims[0]
            expected[4] = mu[4] + k_row * SIGMA  # vertical axis: dims[1]
            assert torch.allclose(grid[r, c].flatten(), expected)
    assert torch.equal(grid[2, 2].flatten(), mu)  # k = (0, 0) is the mean


def test_variation_grid_rejects_bad_dims() -> None:
    with pytest.raises(ValueError, match="two different indices"):
        figures.variation_grid(LatentEcho(), _images(1)[0], dims=(2, 2))
    with pytest.raises(ValueError, match="two different indices"):
        figures.variation_grid(LatentEcho(), _images(1)[0], dims=(0, LATENT))


def test_transition_grid_is_the_convex_combination_of_the_means() -> None:
    x1, x2 = _images(3), -_images(3) - 1
    grid = figures.transition_grid(LatentEcho(), x1, x2, steps=6)
    assert grid.shape == (3, 6, 1, 1, LATENT)
    for k in range(6):
        a = k / 5
        expected = (1 - a) * x1.flatten(1) + a * x2.flatten(1)
        assert torch.allclose(grid[:, k].flatten(1), expected)
    assert torch.equal(grid[:, 0].flatten(1), x1.flatten(1))
    assert torch.equal(grid[:, -1].flatten(1), x2.flatten(1))


def test_reconstruction_grid_and_prior_samples_geometry() -> None:
    x = _images(4)
    grid = figures.reconstruction_grid(LatentEcho(), x)
    assert grid.shape == (2, 4, 1, 1, LATENT)
    assert torch.equal(grid[0], x) and torch.equal(grid[1], x)  # echo model: exact
    samples = figures.prior_samples(LatentEcho(), LATENT, 3, 5, generator=torch.Generator())
    assert samples.shape == (3, 5, 1, 1, LATENT)
    values = figures.prior_samples(
        LatentEcho(), LATENT, 40, 50, generator=torch.Generator().manual_seed(0)
    ).flatten()
    assert abs(values.mean().item()) < 0.03 and abs(values.std().item() - 1) < 0.03  # N(0, I)


def test_tile_geometry_and_pixel_mapping() -> None:
    grid = torch.full((2, 3, 3, 4, 5), -1.0)
    grid[1, 2] = 1.0
    canvas = figures.tile(grid, pad=2)
    assert canvas.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    assert canvas.dtype == np.uint8
    assert (canvas[2:6, 2:7] == 0).all()  # cell (0, 0): -1 -> black
    top, left = 2 + 1 * 6, 2 + 2 * 7
    assert (canvas[top : top + 4, left : left + 5] == 255).all()  # cell (1, 2): +1 -> white
    assert (canvas[0:2] == 255).all()  # white padding


def test_save_image_grid_writes_a_png(tmp_path: Path) -> None:
    grid = torch.zeros(5, 5, 3, 8, 8)
    labels = ["-20", "-10", "0", "10", "20"]
    canvas = figures.save_image_grid(
        grid, tmp_path / "g.png", col_labels=labels, row_labels=labels, xlabel="i", ylabel="j"
    )
    assert canvas.shape == (5 * 10 + 2, 5 * 10 + 2, 3)
    assert Image.open(tmp_path / "g.png").format == "PNG"
    with pytest.raises(ValueError, match="row_labels must have 5"):
        figures.save_image_grid(grid, tmp_path / "h.png", row_labels=["a"])


def test_joint_histogram_counts_every_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=400), rng.normal(size=400)
    joint, marginal_a, marginal_b = figures.save_joint_histogram(a, b, tmp_path / "h.png", bins=20)
    assert joint.shape == (20, 20) and marginal_a.shape == (20,) and marginal_b.shape == (20,)
    assert joint.sum() == 400 and marginal_a.sum() == 400 and marginal_b.sum() == 400
    assert np.array_equal(joint.sum(axis=1), marginal_a)  # the marginals of the joint
    assert np.array_equal(joint.sum(axis=0), marginal_b)
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="same length"):
        figures.save_joint_histogram(a, b[:10], tmp_path / "x.png")


def test_latent_and_collapse_histograms_write_pngs(tmp_path: Path) -> None:
    z = np.random.default_rng(0).normal(size=(50, 6))
    figures.save_latent_histograms(z, [0, 3, 5], [True, False, True], tmp_path / "l.png")
    figures.save_collapse_histograms(np.abs(z[0]), np.full(6, 0.3), tmp_path / "c.png")
    assert Image.open(tmp_path / "l.png").size[0] > 100
    assert Image.open(tmp_path / "c.png").size[0] > 100


def test_report_markdown_links_and_self_contained_html(tmp_path: Path) -> None:
    Image.new("RGB", (4, 3), "red").save(tmp_path / "a.png")
    blocks = [
        Heading("Numbers"),
        Paragraph("a `code` <tag> & text"),
        Table(["name", "value"], [["pi", math.pi], ["n", 3], ["bad|cell", float("nan")]]),
        Figure("a.png", "a red image"),
    ]
    markdown_path, html_path = write_report(tmp_path, "T", blocks)
    markdown, page = markdown_path.read_text(), html_path.read_text()
    assert "![a red image](a.png)" in markdown
    assert "| pi | 3.142 |" in markdown and "| n | 3 |" in markdown
    assert "bad\\|cell" in markdown and "n/a" in markdown
    assert page.count("data:image/png;base64,") == 1
    assert 'src="a.png"' not in page
    assert "&lt;tag&gt; &amp; text" in page and "<code>code</code>" in page
    with pytest.raises(ValueError, match=r"missing\.png"):
        write_report(tmp_path, "T", [Figure("missing.png", "x")])


def test_write_json_converts_numpy_and_torch(tmp_path: Path) -> None:
    write_json(
        {"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": np.array([True]), "d": math.inf},
        tmp_path / "m.json",
    )
    text = (tmp_path / "m.json").read_text()
    assert '"a": 1.5' in text and '"d": "inf"' in text
    assert not list(tmp_path.glob("*.tmp"))
