"""sCIFAR from CIFAR-10 python pickles written in the official layout (cifar-10-batches-py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DataFolderError, MalformedDataError, SCIFARDataModule
from datamodules.scifar import RGB_MEAN, RGB_STD
from data_files import fitted

IMAGES_PER_BATCH = 8


def batch_images(batch_number: int) -> np.ndarray:
    """(N, 3072) uint8 rows as CIFAR stores them: the R plane, then G, then B, each row-major 32x32."""
    rng = np.random.default_rng(batch_number)
    return rng.integers(0, 256, size=(IMAGES_PER_BATCH, 3072), dtype=np.uint8)


def batch_labels(batch_number: int) -> list[int]:
    return [(batch_number + index) % 10 for index in range(IMAGES_PER_BATCH)]


def write_cifar(root: Path) -> Path:
    """root/cifar-10-batches-py with data_batch_1..5, test_batch (number 0) and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = {number: f"data_batch_{number}" for number in range(1, 6)} | {0: "test_batch"}
    for number, name in names.items():
        batch = {
            b"batch_label": name.encode(),
            b"labels": batch_labels(number),
            b"data": batch_images(number),
            b"filenames": [f"img_{number}_{index}.png".encode() for index in range(IMAGES_PER_BATCH)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{index}".encode() for index in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def loaded_module(root: Path, **kwargs) -> SCIFARDataModule:
    return fitted(SCIFARDataModule(data_dir=str(root), val_size=10, **kwargs))


def test_splits_are_seeded_and_test_is_the_test_batch(cifar_root: Path) -> None:
    module = loaded_module(cifar_root, seed=2)
    assert [len(module.datasets[split]) for split in ("train", "val", "test")] == [30, 10, 8]
    val_indices = module.datasets["val"].indices.tolist()
    assert val_indices == loaded_module(cifar_root, seed=2).datasets["val"].indices.tolist()
    assert val_indices != loaded_module(cifar_root, seed=3).datasets["val"].indices.tolist()
    assert not set(val_indices) & set(module.datasets["train"].indices.tolist())
    assert [module.datasets["test"][i]["y"] for i in range(IMAGES_PER_BATCH)] == batch_labels(0)
    batch_number, position = divmod(val_indices[0], IMAGES_PER_BATCH)  # training images: data_batch_1..5
    assert module.datasets["val"][0]["y"] == batch_labels(batch_number + 1)[position]


def test_tokens_are_rounded_luma_plus_one_in_row_major_order(cifar_root: Path) -> None:
    module = loaded_module(cifar_root, mode="tokens")
    x = module.datasets["test"][3]["x"]
    red, green, blue = batch_images(0)[3].reshape(3, 1024).astype(float)
    expected = np.rint(0.2989 * red + 0.5870 * green + 0.1140 * blue) + 1
    assert x.dtype == torch.long and x.shape == (1024,)
    assert x.tolist() == expected.astype(int).tolist()
    assert 1 <= int(x.min()) and int(x.max()) <= 256


def test_rgb_is_normalised_per_channel(cifar_root: Path) -> None:
    module = loaded_module(cifar_root, mode="rgb", batch_size=4)
    batch = next(iter(module.test_dataloader()))
    assert batch["x"].shape == (4, 1024, 3) and batch["x"].dtype == torch.float32 and batch["mask"].all()
    planes = batch_images(0)[:4].reshape(4, 3, 1024).transpose(0, 2, 1) / 255.0
    np.testing.assert_allclose(batch["x"].numpy(), (planes - RGB_MEAN.numpy()) / RGB_STD.numpy(), atol=1e-5)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_gray_mode_is_normalised_luma(cifar_root: Path) -> None:
    module = loaded_module(cifar_root, mode="gray", batch_size=4)
    batch = next(iter(module.train_dataloader()))
    assert batch["x"].shape == (4, 1024, 1) and batch["x"].dtype == torch.float32
    image = module.datasets["train"].indices[batch["index"][0]]  # position among the 40 training images
    batch_number, position = divmod(int(image), IMAGES_PER_BATCH)
    red, green, blue = batch_images(batch_number + 1)[position].reshape(3, 1024)
    luma = np.rint(0.2989 * red + 0.5870 * green + 0.1140 * blue)
    np.testing.assert_allclose(batch["x"][0, :, 0].numpy(), (luma - 122.6) / 61.0, atol=1e-5)


def test_missing_and_malformed_batches(tmp_path: Path) -> None:
    with pytest.raises(DataFolderError) as error:
        SCIFARDataModule(data_dir=str(tmp_path)).setup()
    for expected in (str(tmp_path), "data_batch_1", "test_batch", "cifar-10-batches-py", "download: true"):
        assert expected in str(error.value)
    folder = write_cifar(tmp_path) / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"labels": [1]}))
    with pytest.raises(MalformedDataError, match="data_batch_3"):
        SCIFARDataModule(data_dir=str(folder), val_size=10).setup()


def test_out_of_range_label_is_refused_on_read_naming_file_and_entry(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path) / "cifar-10-batches-py"
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    batch[b"labels"][3] = 12
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(MalformedDataError, match=r"data_batch_2: entry 3: label 12 is outside 0\.\.9"):
        SCIFARDataModule(data_dir=str(folder), val_size=10).setup()


class RunsShell:
    """Pickles as a call of os.system: unpickling it with plain pickle.load runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_crafted_batch_runs_no_code_and_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path) / "cifar-10-batches-py"
    marker = tmp_path / "marker"
    batch = {b"data": batch_images(1), b"labels": batch_labels(1), b"x": RunsShell(f"touch {marker}")}
    (folder / "data_batch_4").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(MalformedDataError, match=r"data_batch_4 is not a CIFAR-10 python batch.*names posix\.system"):
        SCIFARDataModule(data_dir=str(folder), val_size=10).setup()
    assert not marker.exists()


def test_random_bytes_batch_names_the_file(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path) / "cifar-10-batches-py"
    for seed in (35, 38, 73, 215):  # UnicodeDecodeError, OverflowError, ValueError, MemoryError from pickle
        (folder / "test_batch").write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(MalformedDataError, match=f"{folder / 'test_batch'} is not a CIFAR-10 python batch"):
            SCIFARDataModule(data_dir=str(folder), val_size=10).setup()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_batches_of_every_pickle_protocol_and_python2_numpy_names_load(tmp_path: Path, protocol: int) -> None:
    """The official files are Python 2 pickles naming numpy.core.multiarray; re-saved copies use
    newer protocols (bytes via _codecs.encode, arrays via _frombuffer) and numpy._core names."""
    folder = write_cifar(tmp_path) / "cifar-10-batches-py"
    for number, name in enumerate(["test_batch", *(f"data_batch_{n}" for n in range(1, 6))]):
        data = pickle.dumps({b"data": batch_images(number), b"labels": batch_labels(number)}, protocol=protocol)
        if protocol < 4:  # GLOBAL names are plain lines there (later protocols prefix their lengths)
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(data)
    data = SCIFARDataModule(data_dir=str(folder), val_size=10, mode="rgb")
    data.setup()
    assert len(data.test_dataloader().dataset) == IMAGES_PER_BATCH
