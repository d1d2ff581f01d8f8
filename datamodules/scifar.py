"""Sequential CIFAR-10 (LRA Image / S4 sCIFAR): each 32x32 image read as a 1024-long sequence.

Reads the torchvision CIFAR10 folder (cifar-10-batches-py python pickles) directly, so
any copy of the official batches works; the pickles are read with `BatchUnpickler`, which
builds only what the official files hold, so a crafted file cannot run code. Pixels run row
by row. Modes:

- ``tokens``: grayscale integers 0..255 as token ids 1..256 (LRA), vocab 257;
- ``gray``: grayscale normalised floats, input_dim 1 (S4);
- ``rgb``: normalised RGB floats, input_dim 3.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.archives import extract_tar_file
from datamodules.base import TaskDataModule
from datamodules.batching import LabelledDataset, seeded_split
from datamodules.parsing import MalformedDataError, check_labels
from esssm.batch import BYTE_VOCAB_SIZE

BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
TEST_BATCH = "test_batch"
NUM_CLASSES = 10
SEQ_LEN = 32 * 32
GRAY_WEIGHTS = torch.tensor([0.2989, 0.5870, 0.1140])  # ITU-R 601 luma, as PIL/torchvision/TF grayscale
# Normalisation constants of the CIFAR-10 training set (as in the S4 code base).
GRAY_MEAN, GRAY_STD = torch.tensor([122.6 / 255.0]), torch.tensor([61.0 / 255.0])
RGB_MEAN, RGB_STD = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
INPUT_DIMS = {"tokens": None, "gray": 1, "rgb": 3}


class BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists, bytes/str, ints and NumPy arrays.

    Those are what the official files hold (Python 2 pickles of numpy arrays; copies re-saved
    by Python 3 add `_codecs.encode` for bytes). Any other global a file names (os.system, a
    class with a __reduce__) is refused instead of called.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
    })  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, list[Any]]:
    """(b'data', b'labels') of one CIFAR python batch, read with `BatchUnpickler`; any failure
    (not a pickle, a foreign global, a missing key) raises MalformedDataError naming the file."""
    try:
        with open(path, "rb") as file:
            batch = BatchUnpickler(file, encoding="bytes").load()
        return np.asarray(batch[b"data"], dtype=np.uint8), batch[b"labels"]
    except Exception as error:  # random bytes fail in many ways (UnicodeDecodeError, ValueError, ...)
        problem = "is not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels')"
        raise MalformedDataError(f"{path} {problem}: {type(error).__name__}: {error}") from None


def read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 1024, 3) uint8 in row-major order and labels (N,) from CIFAR python pickles."""
    images, labels = [], []
    for path in paths:
        data, batch_labels = read_batch(path)
        if data.ndim != 2 or data.shape[1] != 3 * SEQ_LEN or len(batch_labels) != len(data):
            shapes = f"got {data.shape} and {len(batch_labels)} labels"
            raise MalformedDataError(f"{path}: b'data' must be (N, 3072) with N labels; {shapes}")
        images.append(data.reshape(-1, 3, SEQ_LEN).transpose(0, 2, 1))
        labels.append(check_labels(batch_labels, NUM_CLASSES, path))
    return np.concatenate(images), np.concatenate(labels)


def to_gray(pixels: torch.Tensor) -> torch.Tensor:
    """(L, 3) uint8 RGB -> (L,) luma levels 0..255 (float, rounded)."""
    return torch.round(pixels.float() @ GRAY_WEIGHTS).clamp(0, 255)


class PixelSequenceDataset(LabelledDataset):
    """Images (N, 1024, 3) uint8 as sequences: "x" (1024,) long ids for tokens, else (1024, C) float.

    Keeps the uint8 pixels and converts per item, so the 60k images stay at 180 MB.
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, mode: str) -> None:
        super().__init__(labels)
        self.pixels = pixels
        self.mode = mode

    def inputs(self, index: int) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(self.pixels[index])
        if self.mode == "tokens":
            return {"x": to_gray(pixels).long() + 1}
        if self.mode == "gray":
            return {"x": (to_gray(pixels)[:, None] / 255.0 - GRAY_MEAN) / GRAY_STD}
        return {"x": (pixels.float() / 255.0 - RGB_MEAN) / RGB_STD}


class SCIFARDataModule(TaskDataModule):
    """Sequential CIFAR-10, 10 classes, sequences of 1024 pixels.

    Batches: x (B, 1024) long (mode "tokens") or (B, 1024, C) float, mask (B, 1024) all
    True, y (B,), index (B,). Train/val: a seeded split of the 50k training images
    (val_size for validation); test: the official test batch.
    """

    folder_name = "cifar10"
    expected_files = (*TRAIN_BATCHES, TEST_BATCH)
    subfolders = (BATCH_FOLDER,)
    train_examples = 45_000  # CIFAR-10 after the 5,000 validation images

    def __init__(
        self, mode: Literal["tokens", "gray", "rgb"] = "gray", val_size: int = 5000, **kwargs: Any
    ) -> None:
        """Common arguments (data_dir, batch_size, ...): see TaskDataModule.

        Args:
            mode: "tokens" (LRA: gray levels as ids), "gray" (S4: normalised floats) or "rgb".
            val_size: training images held out for validation (seeded).
        """
        super().__init__(
            num_classes=NUM_CLASSES,
            seq_len=SEQ_LEN,
            vocab_size=BYTE_VOCAB_SIZE if mode == "tokens" else None,
            input_dim=INPUT_DIMS[mode],
            objective="classification",
            **kwargs,
        )
        self.mode = mode
        self.val_size = val_size

    def how_to_get(self) -> str:
        return (
            f"set download: true (torchvision's CIFAR10 archive into {self.data_dir}), or extract "
            f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there (folder {BATCH_FOLDER})."
        )

    def _download(self) -> None:
        """torchvision's CIFAR10 archive (md5-checked, kept beside the data as torchvision does),
        extracted by datamodules.archives rather than torchvision's extractor."""
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_url

        download_url(CIFAR10.url, str(self.data_dir), CIFAR10.filename, CIFAR10.tgz_md5)
        extract_tar_file(self.data_dir / CIFAR10.filename, self.data_dir)

    def _load_splits(self) -> dict[str, Dataset]:
        root = self.data_root()
        train = PixelSequenceDataset(*read_batches([root / name for name in TRAIN_BATCHES]), self.mode)
        test = PixelSequenceDataset(*read_batches([root / TEST_BATCH]), self.mode)
        train_part, val_part = seeded_split(train, self.val_size, self.seed)
        return {"train": train_part, "val": val_part, "test": test}
