"""Tests of the embedded procedural dataset (mixelbo_reference.procedural)."""

from __future__ import annotations

import colorsys
import hashlib
import itertools
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from mixelbo_reference import procedural
from mixelbo_reference.procedural import (
    FACTOR_NAMES,
    FACTORS,
    ProceduralDataset,
    object_coverage,
    render,
    sample_factors,
)


def _column(name: str) -> int:
    return FACTOR_NAMES.index(name)


def _factors(**values: float) -> np.ndarray:
    """One factor row: defaults put a mid-sized square low in the image, away from the band."""
    row = dict.fromkeys(FACTOR_NAMES, 0.0)
    row.update(x=0.5, y=0.65, scale=0.15, shape=1.0, background_brightness=0.4)
    row.update(values)
    return np.array([[row[name] for name in FACTOR_NAMES]], dtype=np.float32)


def test_factor_table_has_continuous_and_discrete_factors() -> None:
    dataset_kinds = [factor.kind for factor in FACTORS]
    assert len(FACTORS) >= 5
    assert dataset_kinds.count("continuous") >= 3 and dataset_kinds.count("discrete") >= 2
    factors = sample_factors(2000, seed=0)
    for k, factor in enumerate(FACTORS):
        if factor.kind == "discrete":
            assert set(np.unique(factors[:, k])) == set(range(factor.values))
        else:
            assert factor.low <= factors[:, k].min() and factors[:, k].max() < factor.high


def test_factors_are_uniform_and_pairwise_independent() -> None:
    factors = sample_factors(5000, seed=0).astype(np.float64)
    for k, factor in enumerate(FACTORS):
        if factor.kind == "continuous":
            scaled = (factors[:, k] - factor.low) / (factor.high - factor.low)
            assert stats.kstest(scaled, "uniform").pvalue > 1e-3, factor.name
        else:
            counts = np.bincount(factors[:, k].astype(int), minlength=factor.values)
            assert stats.chisquare(counts).pvalue > 1e-3, factor.name
    # Pearson correlation of independent pairs over 5000 samples: sd about 0.014.
    correlation = np.corrcoef(factors, rowvar=False)
    off_diagonal = correlation[~np.eye(len(FACTORS), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.06
    # Discrete pairs: a contingency-table test of independence.
    discrete = [k for k, factor in enumerate(FACTORS) if factor.kind == "discrete"]
    for a, b in itertools.combinations(discrete, 2):
        table = np.zeros((FACTORS[a].values, FACTORS[b].values))
        np.add.at(table, (factors[:, a].astype(int), factors[:, b].astype(int)), 1)
        assert stats.chi2_contingency(table).pvalue > 1e-3


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    first = ProceduralDataset("train", size=48, image_size=32, seed=7, cache_dir=tmp_path / "a")
    again = ProceduralDataset("train", size=48, image_size=32, seed=7, cache_dir=tmp_path / "b")
    other = ProceduralDataset("train", size=48, image_size=32, seed=8, cache_dir=tmp_path / "a")
    assert not first.from_cache and not again.from_cache
    assert np.asarray(first.images).tobytes() == np.asarray(again.images).tobytes()
    assert first.factors.tobytes() == again.factors.tobytes()
    assert not np.array_equal(first.factors, other.factors)
    assert (np.asarray(first.images) != np.asarray(other.images)).mean() > 0.5
    # A smaller dataset is the start of a larger one.
    small = ProceduralDataset("train", size=10, image_size=32, seed=7, cache_dir=tmp_path / "a")
    assert np.array_equal(small.images, first.images[:10])


def test_train_and_test_are_disjoint(tmp_path: Path) -> None:
    train = ProceduralDataset("train", size=300, image_size=32, cache_dir=tmp_path)
    test = ProceduralDataset("test", size=300, image_size=32, cache_dir=tmp_path)
    assert not {tuple(row) for row in train.factors} & {tuple(row) for row in test.factors}

    def digests(images: np.ndarray) -> set[str]:
        return {
            hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images
        }

    assert not digests(train.images) & digests(test.images)


def test_second_construction_is_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXELBO_CACHE", str(tmp_path / "env-cache"))
    first = ProceduralDataset("test", size=20, image_size=32, seed=3)
    assert not first.from_cache
    written = sorted(p.name for p in (tmp_path / "env-cache" / "procedural").iterdir())
    assert written == [
        "v1-test-n20-s32-seed3.factors.npy",
        "v1-test-n20-s32-seed3.images.npy",
    ]

    def forbidden(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(procedural, "render", forbidden)
    monkeypatch.setattr(procedural, "sample_factors", forbidden)
    second = ProceduralDataset("test", size=20, image_size=32, seed=3)
    assert second.from_cache
    assert np.array_equal(second.images, first.images)
    assert np.array_equal(second.factors, first.factors)
    with pytest.raises(AssertionError, match="regenerated"):  # any other parameter misses
        ProceduralDataset("test", size=20, image_size=32, seed=4)


def test_supported_sizes_give_uint8_images_channels_first(tmp_path: Path) -> None:
    for image_size in (32, 64, 256):
        dataset = ProceduralDataset("test", size=3, image_size=image_size, cache_dir=tmp_path)
        image = dataset[2]
        assert image.dtype == torch.uint8 and image.shape == (3, image_size, image_size)
        assert image.is_contiguous()
        assert np.array_equal(image.numpy(), dataset.images[2].transpose(2, 0, 1))
        assert dataset.factors.dtype == np.float32 and dataset.factors.shape == (3, len(FACTORS))
        assert dataset.factor_names == FACTOR_NAMES and len(dataset.factor_kinds) == len(FACTORS)
        assert np.array_equal(render(dataset.factors, image_size), dataset.images)


def test_object_area_centre_and_rotation_follow_the_factors() -> None:
    size = 256
    areas = {0: math.pi, 1: 4 * 0.8**2, 2: 3 * math.sqrt(3) / 4, 3: 2 * 1.2 - 0.36}
    rng = np.random.default_rng(1)
    rows = []
    for shape in range(4):
        for _ in range(3):
            rows.append(
                _factors(
                    shape=shape,
                    x=rng.uniform(0.3, 0.7),
                    y=rng.uniform(0.32, 0.7),
                    scale=rng.uniform(0.1, 0.2),
                    rotation=rng.uniform(-math.pi / 4, math.pi / 4),
                )[0]
            )
    factors = np.stack(rows)
    coverage = object_coverage(factors, size).astype(np.float64)
    centres = (np.arange(size) + 0.5) / size
    for row, alpha in zip(factors, coverage, strict=True):
        shape, x, y, r = (row[_column(n)] for n in ("shape", "x", "y", "scale"))
        area = alpha.sum() / size**2
        assert area == pytest.approx(areas[int(shape)] * r**2, rel=0.02)
        assert (alpha * centres[None, :]).sum() / alpha.sum() == pytest.approx(x, abs=0.3 / size)
        assert (alpha * centres[:, None]).sum() / alpha.sum() == pytest.approx(y, abs=0.3 / size)

    def covered(row: np.ndarray, angle: float, distance: float) -> float:
        """Coverage at a point ``distance * r`` from the centre, counter-clockwise ``angle``."""
        x, y, r = (row[_column(n)] for n in ("x", "y", "scale"))
        column = round((x + distance * r * math.cos(angle)) * size - 0.5)
        line = round((y - distance * r * math.sin(angle)) * size - 0.5)  # rows grow downwards
        return float(object_coverage(row[None], size)[0, line, column])

    for rotation in (-0.6, 0.0, 0.3):
        cross = _factors(shape=3, rotation=rotation, scale=0.2)[0]
        assert covered(cross, rotation, 0.8) == 1.0  # along an arm
        assert covered(cross, rotation + math.pi / 4, 0.8) == 0.0  # between two arms
    triangle = _factors(shape=2, rotation=0.0, scale=0.2)[0]
    assert covered(triangle, math.pi / 2, 0.8) == 1.0  # towards the apex, pointing up
    assert covered(triangle, -math.pi / 2, 0.8) == 0.0  # beyond the base edge (inradius 0.5)


def test_colours_follow_the_hsv_factors() -> None:
    row = _factors(object_hue=0.6, background_hue=0.1, background_brightness=0.3, shape=0)
    image = render(row, 64)[0].astype(np.float64)
    background = 255 * np.array(colorsys.hsv_to_rgb(0.1, 0.35, 0.3))
    colour = 255 * np.array(colorsys.hsv_to_rgb(0.6, 0.75, 0.95))
    assert np.abs(image[63, 0] - background).max() <= 1  # bottom-left corner: background
    assert np.abs(image[int(0.65 * 64), 32] - colour).max() <= 1  # object centre


def _high_frequency_fraction(region: np.ndarray, cutoff: float) -> float:
    """Share of the (mean-removed) spectral energy above ``cutoff`` cycles per pixel."""
    grey = region.astype(np.float64).mean(axis=-1)
    grey -= grey.mean()
    power = np.abs(np.fft.fft2(grey)) ** 2
    fy = np.fft.fftfreq(grey.shape[0])[:, None]
    fx = np.fft.fftfreq(grey.shape[1])[None, :]
    return float(power[np.hypot(fx, fy) > cutoff].sum() / power.sum())


def test_texture_band_holds_fine_high_frequency_stripes_with_random_phase() -> None:
    factors = sample_factors(16, seed=2)
    factors[:, _column("y")] = 0.68  # keep objects out of the band for a clean measurement
    images = render(factors, 64)
    band_rows = int(0.22 * 64) - 1
    for image in images:
        assert _high_frequency_fraction(image[:band_rows], cutoff=0.25) > 0.9
        assert _high_frequency_fraction(image[20:], cutoff=0.25) < 0.2

    # A phase shift of pi inverts the stripes: s(p) + s(p + pi) = 1, so the band colours of the
    # two images add up to 1.25 * hair + 0.12 wherever the band is fully covered.
    row = _factors(hair_colour=2, texture_phase=1.0)
    shifted = row.copy()
    shifted[0, _column("texture_phase")] += math.pi
    pair = render(np.concatenate([row, shifted]), 64).astype(np.float64)
    hair = np.array([0.88, 0.76, 0.45])
    total = pair[0, :band_rows] + pair[1, :band_rows]
    assert np.abs(total - 255 * (1.25 * hair + 0.12)).max() <= 2
    assert np.abs(pair[0, :band_rows] - pair[1, :band_rows]).mean() > 40  # the phase matters


def test_flips_mirror_the_stored_image_and_keep_its_factors(tmp_path: Path) -> None:
    dataset = ProceduralDataset(
        "train", size=32, image_size=32, cache_dir=tmp_path, flip=True, flip_seed=9
    )
    assert dataset.seed == 9 and dataset.generation_seed == 0
    flipped = 0
    for i in range(32):
        stored = dataset.images[i].transpose(2, 0, 1)
        expected = stored[:, :, ::-1] if dataset.is_flipped(i) else stored
        assert np.array_equal(dataset[i].numpy(), expected)
        flipped += dataset.is_flipped(i)
    assert 0 < flipped < 32


def test_pickling_reopens_the_cache(tmp_path: Path) -> None:
    dataset = ProceduralDataset("test", size=64, image_size=64, cache_dir=tmp_path)
    payload = pickle.dumps(dataset)
    assert len(payload) < dataset.images.nbytes / 10
    assert torch.equal(pickle.loads(payload)[5], dataset[5])


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    cases = [
        ({"split": "val"}, "split must be one of"),
        ({"size": 0}, "size must be an integer >= 1, got 0"),
        ({"image_size": 8}, "image_size must be an integer >= 16, got 8"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            ProceduralDataset(**{"cache_dir": tmp_path, **arguments})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"factors must have shape \(N, 11\)"):
        render(np.zeros((2, 3), dtype=np.float32), 32)
