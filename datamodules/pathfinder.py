"""LRA Pathfinder and Path-X: the datamodule over the LRA release layout.

Each image shows two marker dots and dashed curved paths; the label is 1 when the dots
lie on the two ends of the same path. LRA release layout (``lra_release/pathfinder{32,64,128}``;
Path-X is pathfinder128)::

    pathfinder32/<difficulty>/metadata/<n>.npy         one image per row (plain text despite the suffix)
    pathfinder32/<difficulty>/imgs/<n>/sample_<i>.png  grayscale, 32 x 32

A metadata row is ``imgs/<n> sample_<i>.png <i> <label> ...``: image folder, file name,
image number, label, then the generator's settings (LRA's TFDS builder and the S4 loader read
columns 0, 1 and 3 the same way). Difficulties: curv_baseline (paths of 6 dashes),
curv_contour_length_9 and curv_contour_length_14.

The generator and its command line (datamodules.pathfinder_generator) draw LRA-like images with
this project's own code.
Generate a data set with no download (LRA's size: 200k images, split 80/10/10 when read)::

    python -m datamodules.pathfinder generate --out data/pathfinder --resolution 32 --count 200000 --workers 2
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the generate command: answered before torch and Lightning are imported below
    from datamodules.pathfinder_generator import main

    sys.exit(main())

import io
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules import sources
from datamodules.archives import extract_tar
from datamodules.base import LRAReleaseDataModule
from datamodules.batching import LabelledDataset, seeded_split
from datamodules.parsing import MalformedDataError, malformed, parse_label
from datamodules.pathfinder_generator import Difficulty, check_variant
from datamodules.sources import LRA_RELEASE_ROOT, DataFolderError, lra_release
from esssm.batch import BYTE_VOCAB_SIZE

NUM_CLASSES = 2
NPY_MAGIC = b"\x93NUMPY"
METADATA_COLUMNS = "image folder, file name, image number, label"

# ----------------------------------------------------------------------------- reading


def metadata_order(path: Path) -> tuple[int, int, str]:
    """Numeric metadata files (0.npy, 1.npy, ..., 10.npy) in number order, others after by name."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def metadata_rows(path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """(line, fields) per row of a metadata file: LRA's plain-text rows, or a NumPy string array
    as the original pathfinder generator's np.save writes (row numbers count from 1)."""
    data = path.read_bytes()
    if not data.startswith(NPY_MAGIC):
        for line_number, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                yield line_number, line.split()
        return
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        raise MalformedDataError(f"{path}: not a readable NumPy array of strings ({error})") from None
    if rows.ndim != 2:
        raise MalformedDataError(f"{path}: expected a 2-D array of metadata rows; got shape {rows.shape}")
    for row_number, row in enumerate(rows, start=1):
        yield row_number, [str(field).encode() for field in row]


def read_metadata(folder: Path) -> tuple[list[str], np.ndarray]:
    """Image paths (relative to ``folder``) and labels listed in folder/metadata/*.npy.

    Empty image files are skipped, as LRA's input pipeline drops them (the release has one).
    """
    paths = sorted((folder / "metadata").glob("*.npy"), key=metadata_order)
    if not paths:
        raise DataFolderError(f"{folder / 'metadata'} holds no metadata .npy files")
    files, labels = [], []
    for path in paths:
        for line, fields in metadata_rows(path):
            if len(fields) < 4:
                raise malformed(path, line, f"expected at least 4 columns ({METADATA_COLUMNS}); got {len(fields)}")
            label = parse_label(fields[3], NUM_CLASSES, path, line)
            try:
                relative = f"{fields[0].decode()}/{fields[1].decode()}"
            except UnicodeDecodeError:
                raise malformed(path, line, "the image folder or file name is not UTF-8 text") from None
            try:
                empty = os.stat(folder / relative).st_size == 0
            except FileNotFoundError:
                raise DataFolderError(f"{path}:{line}: image {folder / relative} does not exist") from None
            if not empty:
                files.append(relative)
                labels.append(label)
    if not files:
        raise MalformedDataError(f"{folder / 'metadata'} lists no (non-empty) images")
    return files, np.asarray(labels, dtype=np.int64)


def read_png(path: Path, resolution: int) -> np.ndarray:
    """(resolution^2,) uint8 gray levels of a PNG, row by row.

    A file that does not decode (not an image, truncated, damaged data) is refused naming it.
    """
    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("L"))
    except (OSError, SyntaxError) as error:  # PIL raises SyntaxError for some broken PNG chunks
        what = "is not an image file" if isinstance(error, UnidentifiedImageError) else f"cannot be read ({error})"
        raise MalformedDataError(
            f"{path} {what}: the image is damaged or missing; regenerate the data set "
            "(python -m datamodules.pathfinder generate) or extract it again from the LRA release"
        ) from None
    if pixels.shape != (resolution, resolution):
        height, width = pixels.shape[:2]
        raise MalformedDataError(f"{path}: expected {resolution}x{resolution} pixels; got {width}x{height}")
    return pixels.reshape(-1)


class PathfinderImages(LabelledDataset):
    """Images listed in the metadata, decoded on access (Path-X: 200k x 16384 pixels stay on disk).

    "x": (L,) long ids gray + 1 (mode "tokens") or (L, 1) float gray scaled to [-1, 1] (as S4).
    """

    def __init__(self, folder: Path, files: list[str], labels: np.ndarray, resolution: int, mode: str) -> None:
        super().__init__(labels)
        self.folder = folder
        self.files = files
        self.resolution = resolution
        self.mode = mode

    def inputs(self, index: int) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(read_png(self.folder / self.files[index], self.resolution))
        return {"x": pixels.long() + 1 if self.mode == "tokens" else (pixels.float()[:, None] / 255.0 - 0.5) / 0.5}


def extract_lra_folder(data_dir: Path, folder: str, url: str) -> None:
    """Stream the LRA release archive and write every file below <LRA_RELEASE_ROOT>/<folder>/
    to data_dir/<folder>/ (one difficulty: about 200k small PNGs plus metadata), through the
    checks of datamodules.archives (nothing lands outside data_dir/<folder>)."""
    prefix = f"{LRA_RELEASE_ROOT}/{folder}/"
    with lra_release(url) as archive:
        written = extract_tar(archive, data_dir / folder, url, partial(_below, prefix))
    if not written:
        raise DataFolderError(f"The archive {url} has no files under {prefix}.")


def _below(prefix: str, name: str) -> str | None:
    """`name` relative to `prefix`, or None for a member outside it."""
    return name.removeprefix(prefix) if name.startswith(prefix) else None


class PathfinderDataModule(LRAReleaseDataModule):
    """LRA Pathfinder / Path-X: binary classification of flattened grayscale images.

    Batches: x (B, L) long (mode "tokens", vocab 257) or (B, L, 1) float (mode "gray"),
    mask (B, L) all True, y (B,), index (B,), with L = resolution^2 (1024, 4096, 16384 for
    Path-X). Train/val/test: a seeded split of all listed images (LRA: 80/10/10).
    """

    folder_name = "pathfinder"
    train_examples = 160_000  # LRA Pathfinder's 200,000 images less 10% + 10% held out

    def __init__(
        self,
        resolution: Literal[32, 64, 128] = 32,
        difficulty: Difficulty = "curv_contour_length_14",
        mode: Literal["tokens", "gray"] = "gray",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        """Common arguments (data_dir, batch_size, ...): see TaskDataModule. data_dir holds
        pathfinder<resolution>/ (or is it, or is the extracted LRA release).

        Args:
            resolution: image side; 128 is Path-X.
            difficulty: curv_baseline, curv_contour_length_9 or curv_contour_length_14 (hardest).
            mode: "tokens" (LRA: gray levels as ids) or "gray" (S4: floats in [-1, 1]).
            val_fraction, test_fraction: parts of the images held out (seeded by ``seed``).
        """
        check_variant(resolution, difficulty)
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            fractions = f"{val_fraction}, {test_fraction}"
            raise ValueError(f"need 0 < val_fraction, test_fraction and a sum below 1; got {fractions}")
        self.lra_folder = f"pathfinder{resolution}"
        self.expected_files = (f"{difficulty}/metadata",)
        super().__init__(
            num_classes=NUM_CLASSES,
            seq_len=resolution * resolution,
            vocab_size=BYTE_VOCAB_SIZE if mode == "tokens" else None,
            input_dim=None if mode == "tokens" else 1,
            objective="classification",
            **kwargs,
        )
        self.resolution = resolution
        self.difficulty = difficulty
        self.mode = mode
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def how_to_get(self) -> str:
        return (
            "generate them (no download) with `python -m datamodules.pathfinder generate "
            f"--out {self.data_dir} --resolution {self.resolution} --difficulty {self.difficulty}`, "
            f"or extract {LRA_RELEASE_ROOT}/{self.lra_folder}/{self.difficulty} from the LRA release "
            f"lra_release.gz ({sources.LRA_RELEASE_URL}) there, or set download: true to stream it."
        )

    def _download(self) -> None:
        extract_lra_folder(self.data_dir, f"{self.lra_folder}/{self.difficulty}", sources.LRA_RELEASE_URL)

    def _load_splits(self) -> dict[str, Dataset]:
        folder = self.data_root() / self.difficulty
        images = PathfinderImages(folder, *read_metadata(folder), self.resolution, self.mode)
        val_size, test_size = int(self.val_fraction * len(images)), int(self.test_fraction * len(images))
        if min(val_size, test_size, len(images) - val_size - test_size) < 1:
            raise MalformedDataError(
                f"{folder}: {len(images)} images are too few for val_fraction={self.val_fraction} "
                f"and test_fraction={self.test_fraction} (every split needs one)"
            )
        rest, test = seeded_split(images, test_size, self.seed)
        train, val = seeded_split(rest, val_size, self.seed)
        return {"train": train, "val": val, "test": test}
