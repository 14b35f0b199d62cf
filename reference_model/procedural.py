"""The embedded procedural image dataset: a trainer default that needs no download.

Each RGB image is drawn, from a seed, as: a flat background, a band of fine striped texture
across the top (the stand-in for the hair that the paper's adversarial term keeps sharp) and one
anti-aliased object in front. Eleven factors of variation are drawn independently and uniformly
per image and saved with it (:data:`FACTORS`):

============================  ==========  ===============================================
name                          kind        values
============================  ==========  ===============================================
``shape``                     discrete    0 circle, 1 square, 2 triangle, 3 cross
``x``, ``y``                  continuous  object centre, fraction of the width / height
``scale``                     continuous  object size ``r``, fraction of the width
``rotation``                  continuous  radians, counter-clockwise as displayed
``object_hue``                continuous  hue of the object (saturation 0.75, value 0.95)
``background_hue``            continuous  hue of the background (saturation 0.35)
``background_brightness``     continuous  HSV value of the background
``hair_colour``               discrete    0 dark brown, 1 brown, 2 blond, 3 red
``texture_orientation``       discrete    stripes' wave vector at 60 or 120 degrees
``texture_phase``             continuous  phase of the stripes, radians (random per image)
============================  ==========  ===============================================

Shapes in units of ``r``: circle of radius 1 (area pi r^2), square of half-side 0.8 (2.56 r^2),
equilateral triangle of circumradius 1 pointing up at rotation 0 (3 sqrt(3)/4 r^2), cross of two
2 x 0.6 bars (2.04 r^2). The texture band covers the top ``BAND_HEIGHT`` of the image; its
stripes ``0.5 + 0.5 sin(2 pi (k . p) / 3 px + phase)`` have a period of 3 pixels at every image
size (a spatial frequency of 1/3 cycle per pixel, near the Nyquist limit of 1/2), so a blurry
reconstruction loses them and a sharp one must invent them; their phase is random per image, so
no decoder can predict it exactly. The object may occlude the band.

Generation is vectorised with numpy (chunks of about 2 M pixels, a tqdm progress bar) and
deterministic: the factors of split ``s`` with seed ``k`` come from the stream
``SeedSequence(k, spawn_key=(0 for train, 1 for test))``, one row of uniforms per image, so the
train and test splits are disjoint and the first ``n`` images of a larger dataset are the ``n``
images of a smaller one. Images are rendered from the float32 factors that are stored, so
``render(dataset.factors, S)`` reproduces ``dataset.images``. On the same machine and numpy the
bytes are identical run to run (the float32 sine may differ by one rounding step across CPUs).

Caching: the first construction writes ``<key>.images.npy`` (uint8 ``(N, S, S, 3)``, memory-mapped
afterwards) and ``<key>.factors.npy`` (float32 ``(N, F)``) into
``cache_dir`` (default ``$MIXELBO_CACHE``, else ``~/.cache/mixelbo``) ``/procedural/``, where the
key names the generator version, split, size, image size and seed; each file is written to a
temporary name then renamed. Later constructions load them without generating.

Horizontal flips (training split) mirror the image; :attr:`ProceduralDataset.factors` always
describe the unflipped image (a flip maps ``x`` to ``1 - x``, ``rotation`` to ``-rotation`` and
swaps the texture orientations). Use the test split, or ``flip=False``, to relate images to
factors.

Example:
    >>> data = ProceduralDataset("test", size=8, image_size=32, cache_dir=tmp)  # doctest: +SKIP
    >>> data[0].shape, data.factors.shape  # doctest: +SKIP
    (torch.Size([3, 32, 32]), (8, 11))
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from mixelbo_reference.data import AugmentedImageDataset

GENERATOR_VERSION = 1
"""Part of the cache key; bump it whenever the images a seed gives change."""

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Factor:
    """One factor of variation: continuous uniform on ``[low, high)``, or discrete uniform on
    ``{0, ..., values - 1}``."""

    name: str
    kind: Literal["continuous", "discrete"]
    low: float = 0.0
    high: float = 1.0
    values: int = 0


FACTORS = (
    Factor("shape", "discrete", values=4),
    Factor("x", "continuous", 0.30, 0.70),
    Factor("y", "continuous", 0.32, 0.70),
    Factor("scale", "continuous", 0.10, 0.20),
    Factor("rotation", "continuous", -math.pi / 4, math.pi / 4),
    Factor("object_hue", "continuous", 0.0, 1.0),
    Factor("background_hue", "continuous", 0.0, 1.0),
    Factor("background_brightness", "continuous", 0.20, 0.60),
    Factor("hair_colour", "discrete", values=4),
    Factor("texture_orientation", "discrete", values=2),
    Factor("texture_phase", "continuous", 0.0, 2 * math.pi),
)
FACTOR_NAMES = [factor.name for factor in FACTORS]
FACTOR_KINDS = [factor.kind for factor in FACTORS]

SHAPE_NAMES = ("circle", "square", "triangle", "cross")
SHAPE_AREAS = (math.pi, 4 * 0.8**2, 3 * math.sqrt(3) / 4, 2 * (2 * 0.6) - 0.6**2)
"""Area of each shape in units of ``scale**2`` (fraction of the image width squared)."""

OBJECT_SATURATION = 0.75
OBJECT_VALUE = 0.95
BACKGROUND_SATURATION = 0.35
HAIR_PALETTE = np.array(
    [[0.22, 0.16, 0.12], [0.50, 0.32, 0.18], [0.88, 0.76, 0.45], [0.78, 0.32, 0.12]],
    dtype=np.float32,
)
"""RGB of ``hair_colour`` 0..3 (dark brown, brown, blond, red)."""
BAND_HEIGHT = 0.22
"""Fraction of the image height, from the top, covered by the texture band."""
TEXTURE_PERIOD_PX = 3.0
TEXTURE_ANGLES = (math.radians(60.0), math.radians(120.0))
"""Direction of the stripes' wave vector per ``texture_orientation``, counter-clockwise."""

_PIXELS_PER_CHUNK = 1 << 21


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sample_factors(size: int, seed: int = 0, split: str = "train") -> np.ndarray:
    """Draw the factors of ``size`` images, independent and uniform (see :data:`FACTORS`).

    Args:
        size: Number of images.
        seed: Generation seed, ``>= 0``.
        split: ``"train"`` or ``"test"``: independent streams of the same seed.

    Returns:
        float32 ``(size, len(FACTORS))``; discrete factors hold whole numbers.

    Raises:
        ValueError: For a bad ``size``, ``seed`` or ``split``.
    """
    size = _check_int("size", size, 0)
    seed = _check_int("seed", seed, 0)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    stream = np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),))
    uniforms = np.random.default_rng(stream).random((size, len(FACTORS)))
    columns = []
    for k, factor in enumerate(FACTORS):
        if factor.kind == "discrete":
            columns.append(np.floor(uniforms[:, k] * factor.values))
        else:
            columns.append(factor.low + (factor.high - factor.low) * uniforms[:, k])
    return np.stack(columns, axis=1).astype(np.float32).reshape(size, len(FACTORS))


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    distance: np.ndarray = np.sqrt(u * u + v * v) - 1.0
    return distance


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    distance: np.ndarray = np.maximum(np.abs(u), np.abs(v)) - 0.8
    return distance


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Half-planes of an equilateral triangle (inradius 0.5), apex up: edge normals at -90, 30, 150.
    c = math.sqrt(3) / 2
    distance: np.ndarray = np.maximum(np.maximum(-v, c * u + 0.5 * v), -c * u + 0.5 * v) - 0.5
    return distance


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    distance: np.ndarray = np.minimum(
        np.maximum(au - 1.0, av - 0.3), np.maximum(au - 0.3, av - 1.0)
    )
    return distance


_SHAPES = (_circle, _square, _triangle, _cross)


def _pixel_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the side: x ``(1, 1, S)``, y down ``(1, S, 1)``."""
    centres = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    return centres.reshape(1, 1, -1), centres.reshape(1, -1, 1)


def _column(factors: np.ndarray, name: str) -> np.ndarray:
    return factors[:, FACTOR_NAMES.index(name)].astype(np.float32).reshape(-1, 1, 1)


def object_coverage(factors: np.ndarray, image_size: int) -> np.ndarray:
    """The fraction of each pixel the object covers (anti-aliased over about one pixel).

    A shape's signed distance ``d`` (in units of ``r``, negative inside) in the object's frame
    ``(u, v) = R(-rotation) (p - centre) / r`` (y up) gives coverage ``clip(0.5 - d r S, 0, 1)``.

    Args:
        factors: ``(N, len(FACTORS))`` as from :func:`sample_factors`.
        image_size: Side length ``S`` in pixels.

    Returns:
        float32 ``(N, S, S)`` in [0, 1].
    """
    grid_x, grid_y = _pixel_grid(image_size)
    r = _column(factors, "scale")
    angle = _column(factors, "rotation")
    dx = grid_x - _column(factors, "x")
    dy_up = _column(factors, "y") - grid_y
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy_up) / r
    v = (cos * dy_up - sin * dx) / r
    distance = np.empty(u.shape, dtype=np.float32)
    shape = factors[:, FACTOR_NAMES.index("shape")].astype(np.int64)
    for k, signed_distance in enumerate(_SHAPES):
        chosen = shape == k
        if chosen.any():
            distance[chosen] = signed_distance(u[chosen], v[chosen])
    coverage: np.ndarray = np.clip(0.5 - distance * (r * image_size), 0.0, 1.0)
    return coverage


def _hsv(hue: np.ndarray, saturation: float | np.ndarray, value: float | np.ndarray) -> np.ndarray:
    hue = hue.reshape(-1)
    hsv = np.stack(np.broadcast_arrays(hue, saturation, value), axis=-1)
    return hsv_to_rgb(hsv).astype(np.float32).reshape(-1, 1, 1, 3)


def _render_chunk(factors: np.ndarray, image_size: int) -> np.ndarray:
    size = image_size
    grid_x, grid_y = _pixel_grid(size)
    background = _hsv(
        _column(factors, "background_hue"),
        BACKGROUND_SATURATION,
        _column(factors, "background_brightness").reshape(-1),
    )
    colour = _hsv(_column(factors, "object_hue"), OBJECT_SATURATION, OBJECT_VALUE)
    hair = HAIR_PALETTE[factors[:, FACTOR_NAMES.index("hair_colour")].astype(np.int64)]
    hair = hair.reshape(-1, 1, 1, 3)

    angles = np.array(TEXTURE_ANGLES, dtype=np.float32)
    angle = angles[factors[:, FACTOR_NAMES.index("texture_orientation")].astype(np.int64)]
    angle = angle.reshape(-1, 1, 1)
    along = (grid_x * np.cos(angle) - grid_y * np.sin(angle)) * (size / TEXTURE_PERIOD_PX)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * along + _column(factors, "texture_phase"))
    band_colour = (0.25 + 0.75 * stripes)[..., None] * hair + 0.12 * stripes[..., None]
    band = np.clip(BAND_HEIGHT * size - (grid_y * size - 0.5), 0.0, 1.0)[..., None]

    covered = object_coverage(factors, size)[..., None]
    image = background * (1 - band) + band_colour * band
    image = image * (1 - covered) + colour * covered
    quantised: np.ndarray = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return quantised


def render(factors: np.ndarray, image_size: int, progress: bool = False) -> np.ndarray:
    """Render images from their factors.

    Args:
        factors: ``(N, len(FACTORS))`` (see :data:`FACTORS`).
        image_size: Side length in pixels, ``>= 16``.
        progress: Show a tqdm progress bar.

    Returns:
        uint8 ``(N, S, S, 3)``.

    Raises:
        ValueError: If ``factors`` has the wrong shape or ``image_size < 16``.
    """
    image_size = _check_int("image_size", image_size, 16)
    if factors.ndim != 2 or factors.shape[1] != len(FACTORS):
        raise ValueError(f"factors must have shape (N, {len(FACTORS)}), got {tuple(factors.shape)}")
    images = np.empty((len(factors), image_size, image_size, 3), dtype=np.uint8)
    chunk = max(1, _PIXELS_PER_CHUNK // (image_size * image_size))
    with tqdm(
        total=len(factors), desc="procedural images", unit="img", disable=not progress
    ) as bar:
        for start in range(0, len(factors), chunk):
            stop = min(start + chunk, len(factors))
            images[start:stop] = _render_chunk(factors[start:stop], image_size)
            bar.update(stop - start)
    return images


def default_cache_dir() -> Path:
    """``$MIXELBO_CACHE`` if set, else ``~/.cache/mixelbo``."""
    configured = os.environ.get("MIXELBO_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "mixelbo"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ProceduralDataset(AugmentedImageDataset):
    """The embedded procedural dataset (see the module docstring), generated once and cached.

    Args:
        split: ``"train"`` or ``"test"`` (disjoint streams of the same seed).
        size: Number of images.
        image_size: Side length in pixels, ``>= 16`` (32, 64 and 256 are the usual ones).
        seed: Generation seed.
        cache_dir: Cache folder; ``None`` for ``$MIXELBO_CACHE`` or ``~/.cache/mixelbo``.
        flip: Flip horizontally with probability 1/2, deterministically in (seed, epoch, index).
        flip_seed: Seed of the flips; ``None`` uses ``seed``.

    Attributes:
        factors: float32 ``(size, F)``, the factors of each (unflipped) image.
        factor_names: The ``F`` factor names.
        factor_kinds: ``"continuous"`` or ``"discrete"`` per factor.
        images: uint8 ``(size, S, S, 3)`` (memory-mapped from the cache).
        from_cache: Whether the images were loaded rather than generated.
        skipped: Always 0 (no unreadable files; same interface as the file datasets).

    Shape:
        ``dataset[i]``: ``(3, image_size, image_size)``, uint8 (scale with
        :func:`mixelbo_reference.data.to_unit_range`).

    Raises:
        ValueError: For a bad ``split``, ``size``, ``image_size`` or seed.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 5000,
        image_size: int = 64,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        flip: bool = False,
        flip_seed: int | None = None,
    ) -> None:
        super().__init__(flip, seed if flip_seed is None else flip_seed)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.size = _check_int("size", size, 1)
        self.image_size = _check_int("image_size", image_size, 16)
        self.generation_seed = _check_int("seed", seed, 0)
        self.factor_names = list(FACTOR_NAMES)
        self.factor_kinds = list(FACTOR_KINDS)
        self.skipped = 0
        self.skipped_files: list[str] = []
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = (
            f"v{GENERATOR_VERSION}-{split}-n{self.size}-s{self.image_size}"
            f"-seed{self.generation_seed}"
        )
        self.images_path: Path | None = folder / "procedural" / f"{key}.images.npy"
        self.factors_path = folder / "procedural" / f"{key}.factors.npy"
        self.from_cache = self._load()
        if not self.from_cache:
            self._generate()

    def _load(self) -> bool:
        assert self.images_path is not None
        if not (self.images_path.is_file() and self.factors_path.is_file()):
            return False
        try:
            factors = np.load(self.factors_path)
            images = np.load(self.images_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            warnings.warn(
                f"regenerating unreadable cache {self.images_path}: {error}", stacklevel=3
            )
            return False
        expected = (self.size, self.image_size, self.image_size, 3)
        if factors.shape != (self.size, len(FACTORS)) or images.shape != expected:
            warnings.warn(f"regenerating mismatched cache {self.images_path}", stacklevel=3)
            return False
        self.factors: np.ndarray = factors.astype(np.float32, copy=False)
        self._images: np.ndarray | None = images
        return True

    def _generate(self) -> None:
        assert self.images_path is not None
        self.factors = sample_factors(self.size, self.generation_seed, self.split)
        images = render(self.factors, self.image_size, progress=True)
        try:
            self.images_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(self.factors_path, self.factors)
            _atomic_save(self.images_path, images)
        except OSError as error:
            warnings.warn(
                f"could not cache the procedural dataset in {self.images_path.parent} ({error}); "
                "keeping it in memory",
                stacklevel=3,
            )
            self.images_path = None
            self._images = images
            return
        self._images = np.load(self.images_path, mmap_mode="r")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.images_path is not None:
            state["_images"] = None  # re-opened lazily from the cache, never pickled
        return state

    @property
    def images(self) -> np.ndarray:
        """All images, uint8 ``(size, S, S, 3)``, unflipped."""
        if self._images is None:
            assert self.images_path is not None
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        position = self._position(index)
        return self._to_tensor(np.asarray(self.images[position]), position)
