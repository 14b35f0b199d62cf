"""``mixelbo-prepare PATH OUT``: pack a folder of images into one memory-mapped uint8 array.

Decoding JPEGs while training starves a fast GPU; packing once removes that cost. The images of
``PATH`` are listed and sorted exactly as training lists them
(:func:`mixelbo_reference.data.list_images`), decoded, center-cropped and resized to ``--size``
(:func:`mixelbo_reference.data.load_image`, the same function the folder dataset uses, so a packed
image equals the decoded one byte for byte) by ``--workers`` processes, and written to the new
folder ``OUT``:

* ``OUT/images.npy``: uint8 ``(N, size, size, 3)``, row ``i`` is the ``i``-th sorted file,
  written through ``numpy.lib.format.open_memmap`` and read back with
  ``numpy.load(mmap_mode="r")`` (no copy);
* ``OUT/index.json``: ``format``, ``version``, ``image_size``, ``root``, ``files`` (the sorted
  paths relative to ``PATH``) and ``skipped`` (``[{"file", "error"}]``: files that could not be
  decoded; a warning is printed for each, their rows are zeros and datasets leave them out).

Everything is written into a temporary folder beside ``OUT`` that is renamed to ``OUT`` at the end,
so an interrupted run leaves no half-written ``OUT``. An existing packed ``OUT`` is replaced only
with ``--overwrite``; any other existing ``OUT`` is never touched. Train on the result with
``mixelbo-train --data OUT``; the train/test split is taken over the same sorted file list.

Example:
    mixelbo-prepare ~/data/celeba_hq celeba_hq_256 --size 256 --workers 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from mixelbo_reference.data import (
    PACKED_ARRAY,
    PACKED_FORMAT,
    PACKED_INDEX,
    PACKED_VERSION,
    CorruptImageWarning,
    is_packed,
    list_images,
    load_image,
)


def default_workers() -> int:
    """The CPU cores this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _decode(task: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    position, path, image_size = task
    try:
        return position, load_image(path, image_size), ""
    except Exception as error:  # any decoding failure of one file is recorded, never fatal
        return position, None, f"{type(error).__name__}: {error}"


def _decoded(
    tasks: list[tuple[int, str, int]], workers: int
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    if workers == 0:
        yield from map(_decode, tasks)
        return
    chunksize = max(1, min(64, len(tasks) // (8 * workers)))
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(_decode, tasks, chunksize=chunksize)


def pack_folder(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    image_size: int = 256,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Pack the images below ``path`` into the new folder ``out`` (see the module docstring).

    Args:
        path: Folder of images (recursive; jpg, jpeg, png, webp).
        out: Folder to create, holding ``images.npy`` and ``index.json``.
        image_size: Side length in pixels of the packed images.
        workers: Decoding processes; 0 decodes in this process.
        overwrite: Replace ``out`` if it is an existing packed folder.
        progress: Show a tqdm progress bar.

    Returns:
        The index written to ``out/index.json``.

    Raises:
        ValueError: If ``path`` holds no image, ``out`` exists (and is not a packed folder to
            overwrite), or ``image_size`` / ``workers`` is out of range.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size (--size) must be an integer >= 1, got {image_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers (--workers) must be an integer >= 0, got {workers!r}")
    root = Path(path)
    files = list_images(root)
    if not files:
        raise ValueError(f"PATH {str(path)!r} contains no image (jpg, jpeg, png, webp)")
    target = Path(out)
    if target.exists() or target.is_symlink():
        if not is_packed(target):
            raise ValueError(f"OUT {str(out)!r} exists and is not a packed folder; not touching it")
        if not overwrite:
            raise ValueError(f"OUT {str(out)!r} is an existing packed folder; pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)

    names = [f.relative_to(root).as_posix() for f in files]
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        array = np.lib.format.open_memmap(
            temporary / PACKED_ARRAY,
            mode="w+",
            dtype=np.uint8,
            shape=(len(files), image_size, image_size, 3),
        )
        skipped: list[dict[str, str]] = []
        tasks = [(i, str(f), image_size) for i, f in enumerate(files)]
        with tqdm(total=len(tasks), desc="packing", unit="img", disable=not progress) as bar:
            for position, image, error in _decoded(tasks, workers):
                if image is None:
                    skipped.append({"file": names[position], "error": error})
                    warnings.warn(
                        f"skipping unreadable image {files[position]} ({error})",
                        CorruptImageWarning,
                        stacklevel=2,
                    )
                else:
                    array[position] = image
                bar.update(1)
        array.flush()
        del array
        index: dict[str, Any] = {
            "format": PACKED_FORMAT,
            "version": PACKED_VERSION,
            "image_size": image_size,
            "root": str(root.resolve()),
            "files": names,
            "skipped": skipped,
        }
        (temporary / PACKED_INDEX).write_text(json.dumps(index, indent=1))
        if target.exists():
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
            os.replace(target, retired / target.name)
            os.replace(temporary, target)
            shutil.rmtree(retired)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``mixelbo-prepare``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="mixelbo-prepare",
        description=(
            "Pack a folder of images into OUT/images.npy (uint8, N x size x size x 3, one row per "
            "file in sorted order) and OUT/index.json (file list, size, skipped files), which "
            "mixelbo-train --data OUT memory-maps. Unreadable files are skipped with a warning "
            "and listed in the index."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "path", metavar="PATH", help="folder of images, searched recursively (jpg, jpeg, png, webp)"
    )
    parser.add_argument(
        "out", metavar="OUT", help="folder to create with images.npy and index.json"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        help="side length in pixels: images are center-cropped to a square and resized to it",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="decoding processes (0 decodes in the main process)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is an existing packed folder (never any other folder)",
    )
    args = parser.parse_args(argv)
    try:
        index = pack_folder(args.path, args.out, args.size, args.workers, args.overwrite)
    except ValueError as error:
        parser.error(str(error))
    packed = len(index["files"]) - len(index["skipped"])
    print(
        f"packed {packed} images of {args.size}x{args.size} into {args.out}; "
        f"skipped {len(index['skipped'])} unreadable file(s) (listed in {PACKED_INDEX})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
