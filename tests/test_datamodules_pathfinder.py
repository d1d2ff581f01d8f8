"""Pathfinder: the datamodule on fixtures in the LRA release layout, and the generator's images
checked by an independent connectivity reading (not by trusting the generator's labels)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from datamodules import DataFolderError, MalformedDataError, PathfinderDataModule, sources
from datamodules.pathfinder import read_metadata
from datamodules.pathfinder_generator import PathStyle, draw_image, generate_dataset, lra_style, main

HARD = "curv_contour_length_14"
FOLDERS = {0: 8, 2: 7, 10: 5}  # imgs/<n> -> images; 10 sorts after 2 (metadata files in number order)
COUNT = sum(FOLDERS.values())


# ----------------------------------------------------------------------------- fixtures


def fixture_pixels(number: int, resolution: int) -> np.ndarray:
    """Image ``number``: row r, column c holds (r * 7 + c * 3 + number) % 256 (row-major order checkable)."""
    rows, cols = np.mgrid[:resolution, :resolution]
    return ((rows * 7 + cols * 3 + number) % 256).astype(np.uint8)


def fixture_label(number: int) -> int:
    return number * 5 % 3 % 2


def write_pathfinder(root: Path, resolution: int = 32, difficulty: str = HARD, npy: bool = False) -> Path:
    """root/pathfinder<resolution>/<difficulty> as in the LRA release: PNGs plus one metadata file per
    imgs/<n> folder, LRA's 11 space-separated columns (or, with ``npy``, an np.save string array)."""
    folder = root / f"pathfinder{resolution}" / difficulty
    (folder / "metadata").mkdir(parents=True)
    number = 0
    for folder_number, size in FOLDERS.items():
        (folder / "imgs" / str(folder_number)).mkdir(parents=True)
        rows = []
        for index in range(size):
            name = f"sample_{index}.png"
            Image.fromarray(fixture_pixels(number, resolution)).save(folder / "imgs" / str(folder_number) / name)
            rows.append([f"imgs/{folder_number}", name, str(index), str(fixture_label(number)),
                         "1.0", "14", "4", "2", "0.5", "1", "1"])  # fmt: skip
            number += 1
        path = folder / "metadata" / f"{folder_number}.npy"
        if npy:
            np.save(path, np.array(rows))
        else:
            path.write_text("".join(" ".join(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def pathfinder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pathfinder(tmp_path_factory.mktemp("pathfinder"))


def loaded(root: Path, **kwargs) -> PathfinderDataModule:
    module = PathfinderDataModule(data_dir=str(root), **kwargs)
    module.setup("fit")
    return module


def all_items(module: PathfinderDataModule, split: str) -> list[dict]:
    return [module.datasets[split][i] for i in range(len(module.datasets[split]))]


def item_number(item: dict) -> int:
    """Which fixture image an item is (its top-left pixel is the number, for numbers below 256)."""
    x = item["x"]
    return int(x[0]) - 1 if x.dtype == torch.long else round(float(x[0, 0] * 0.5 + 0.5) * 255)


# ----------------------------------------------------------------------------- datamodule


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, (2, None, 1, 1024, "classification")),
        ({"mode": "tokens"}, (2, 257, None, 1024, "classification")),
        ({"resolution": 64}, (2, None, 1, 4096, "classification")),
        ({"resolution": 128, "mode": "tokens"}, (2, 257, None, 16384, "classification")),  # Path-X
    ],
)
def test_attributes_before_setup(kwargs, expected) -> None:
    module = PathfinderDataModule(**kwargs)
    assert (module.num_classes, module.vocab_size, module.input_dim, module.seq_len, module.objective) == expected
    assert module.datasets == {}


@pytest.mark.parametrize("mode", ["gray", "tokens"])
def test_items_are_flattened_row_major_with_metadata_labels(pathfinder_root: Path, mode: str) -> None:
    module = loaded(pathfinder_root, mode=mode)
    items = [item for split in ("train", "val", "test") for item in all_items(module, split)]
    assert sorted(item_number(item) for item in items) == list(range(COUNT))
    for item in items:
        number = item_number(item)
        pixels = torch.from_numpy(fixture_pixels(number, 32).reshape(-1))
        assert item["y"] == fixture_label(number)
        if mode == "tokens":
            assert item["x"].dtype == torch.long and torch.equal(item["x"], pixels.long() + 1)
        else:
            assert item["x"].shape == (1024, 1) and item["x"].dtype == torch.float32
            torch.testing.assert_close(item["x"][:, 0], pixels.float() / 127.5 - 1.0)


def test_split_is_seeded_disjoint_and_lra_sized(pathfinder_root: Path) -> None:
    module = loaded(pathfinder_root, seed=3)
    numbers = {split: [item_number(item) for item in all_items(module, split)] for split in ("train", "val", "test")}
    assert [len(numbers[split]) for split in ("train", "val", "test")] == [16, 2, 2]  # 80/10/10 of 20
    assert sorted(sum(numbers.values(), [])) == list(range(COUNT))
    again = loaded(pathfinder_root, seed=3)
    assert numbers == {split: [item_number(item) for item in all_items(again, split)] for split in numbers}
    other = loaded(pathfinder_root, seed=4)
    assert numbers["val"] + numbers["test"] != [item_number(item) for split in ("val", "test")
                                                for item in all_items(other, split)]  # fmt: skip
    bigger = loaded(pathfinder_root, val_fraction=0.25, test_fraction=0.3)
    assert [len(bigger.datasets[split]) for split in ("train", "val", "test")] == [9, 5, 6]


def test_batches_follow_the_contract(pathfinder_root: Path) -> None:
    module = loaded(pathfinder_root, batch_size=4)
    batch = next(iter(module.train_dataloader()))
    assert batch["x"].shape == (4, 1024, 1) and batch["mask"].shape == (4, 1024) and batch["mask"].all()
    assert batch["y"].shape == (4,) and set(batch["y"].tolist()) <= {0, 1}
    assert batch["index"].dtype == torch.long
    val = next(iter(module.val_dataloader()))
    assert val["index"].tolist() == [0, 1]


def test_metadata_files_are_read_in_number_order(pathfinder_root: Path) -> None:
    files, labels = read_metadata(pathfinder_root / "pathfinder32" / HARD)
    assert files[:2] == ["imgs/0/sample_0.png", "imgs/0/sample_1.png"]
    assert files[8] == "imgs/2/sample_0.png" and files[15] == "imgs/10/sample_0.png"
    assert labels.tolist() == [fixture_label(number) for number in range(COUNT)]


def test_numpy_metadata_64_pixels_and_release_subfolders(tmp_path: Path) -> None:
    write_pathfinder(tmp_path / "a", resolution=64, npy=True)
    module = loaded(tmp_path / "a", resolution=64)
    assert module.datasets["test"][0]["x"].shape == (4096, 1)
    write_pathfinder(tmp_path / "b" / "lra_release" / "lra_release", difficulty="curv_baseline")
    assert len(loaded(tmp_path / "b", difficulty="curv_baseline").datasets["train"]) == 16
    assert len(loaded(tmp_path / "b" / "lra_release" / "lra_release" / "pathfinder32", difficulty="curv_baseline")
               .datasets["val"]) == 2  # fmt: skip


def test_empty_images_are_dropped_as_lra_does(tmp_path: Path) -> None:
    write_pathfinder(tmp_path)
    (tmp_path / "pathfinder32" / HARD / "imgs" / "2" / "sample_3.png").write_bytes(b"")
    files, _ = read_metadata(tmp_path / "pathfinder32" / HARD)
    assert len(files) == COUNT - 1 and "imgs/2/sample_3.png" not in files


def test_missing_folder_error_names_files_and_both_ways_to_get_them(tmp_path: Path) -> None:
    module = PathfinderDataModule(data_dir=str(tmp_path / "nowhere"), resolution=64, difficulty="curv_baseline")
    module.prepare_data()  # download is off: nothing happens
    with pytest.raises(DataFolderError) as error:
        module.setup()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "curv_baseline/metadata" in message and "pathfinder64" in message
    command = f"python -m datamodules.pathfinder generate --out {tmp_path / 'nowhere'} --resolution 64"
    assert command in message and "lra_release.gz" in message and "lra_release/lra_release/pathfinder64" in message


@pytest.mark.parametrize(
    ("row", "error", "problem"),
    [
        ("imgs/0 sample_0.png 0", MalformedDataError, "expected at least 4 columns"),
        ("imgs/0 sample_0.png 0 2", MalformedDataError, "outside 0..1"),
        ("imgs/0 sample_0.png 0 yes", MalformedDataError, "is not a number"),
        ("imgs/0 sample_99.png 0 1", DataFolderError, "sample_99.png does not exist"),
        ("imgs/\xe9 sample_0.png 0 1", MalformedDataError, "not UTF-8 text"),  # written as latin-1
    ],
)
def test_bad_metadata_row_names_file_and_line(tmp_path: Path, row: str, error: type, problem: str) -> None:
    write_pathfinder(tmp_path)
    path = tmp_path / "pathfinder32" / HARD / "metadata" / "2.npy"
    path.write_bytes(path.read_bytes() + row.encode("latin-1") + b"\n")
    with pytest.raises(error, match=f"{path}:{FOLDERS[2] + 1}: .*{problem}"):
        loaded(tmp_path)


def test_bad_images_and_settings_are_clear_errors(tmp_path: Path) -> None:
    write_pathfinder(tmp_path)
    image = tmp_path / "pathfinder32" / HARD / "imgs" / "0" / "sample_0.png"
    Image.fromarray(np.zeros((16, 32), dtype=np.uint8)).save(image)
    module = loaded(tmp_path, val_fraction=0.5, test_fraction=0.45)
    with pytest.raises(MalformedDataError, match="expected 32x32 pixels; got 32x16"):
        all_items(module, "train") + all_items(module, "val") + all_items(module, "test")
    with pytest.raises(MalformedDataError, match="too few"):
        loaded(tmp_path, val_fraction=0.01)
    with pytest.raises(ValueError, match="sum below 1"):
        PathfinderDataModule(val_fraction=0.5, test_fraction=0.5)
    for metadata in (tmp_path / "pathfinder32" / HARD / "metadata").iterdir():
        metadata.unlink()
    with pytest.raises(DataFolderError, match="holds no metadata"):
        loaded(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_png_is_named_with_what_to_do(tmp_path: Path, damage: str) -> None:
    write_pathfinder(tmp_path)
    image = tmp_path / "pathfinder32" / HARD / "imgs" / "0" / "sample_0.png"
    data = bytearray(image.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[60:70] = bytes(10)  # inside the compressed pixel data
    image.write_bytes(bytes(data))
    module = loaded(tmp_path, val_fraction=0.5, test_fraction=0.45)
    with pytest.raises(MalformedDataError, match=f"{image} cannot be read .*regenerate the data set"):
        all_items(module, "train") + all_items(module, "val") + all_items(module, "test")


def test_download_streams_only_the_difficulty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = write_pathfinder(tmp_path / "release")
    write_pathfinder(release, difficulty="curv_baseline")
    archive = tmp_path / "lra_release.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(release / "pathfinder32", arcname=f"{sources.LRA_RELEASE_ROOT}/pathfinder32")
        tar.addfile(tarfile.TarInfo("lra_release/lra_release/listops-1000/basic_train.tsv"), io.BytesIO())
    monkeypatch.setattr(sources, "LRA_RELEASE_URL", archive.as_uri())
    module = PathfinderDataModule(data_dir=str(tmp_path / "data"), download=True)
    module.prepare_data()
    module.setup()
    assert len(module.datasets["train"]) == 16
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["pathfinder32"]
    assert sorted(p.name for p in (tmp_path / "data" / "pathfinder32").iterdir()) == [HARD]


# ----------------------------------------------------------------------------- generator


def marker_centres(image: np.ndarray, style: PathStyle) -> list[tuple[int, int]]:
    """The marker discs, found by shape alone: the half-bright core eroded by the largest square a
    marker disc holds (a dash, thinner than that square, vanishes). One pixel per blob."""
    side = 2 * int(style.marker_radius / np.sqrt(2)) + 1
    assert style.thickness / 2 < side // 2 + 0.5, "dashes this thick would survive the erosion"
    core = ndimage.binary_erosion(image >= 128, structure=np.ones((side, side)))
    blobs, count = ndimage.label(core, structure=np.ones((3, 3)))
    return [tuple(np.argwhere(blobs == blob)[0]) for blob in range(1, count + 1)]


def markers_connected(image: np.ndarray, style: PathStyle) -> bool:
    """Are the two markers on one ink component, where ink pixels closer than a reach R join?

    Ink: pixels at a quarter brightness or more (within thickness/2 + 1/4 of a centre line, so
    every dash end has an ink pixel within sqrt(2)/2). R lies between what bridges a dash gap
    (dash_gap + sqrt(2)) and what would join different paths (spacing - 1/2): the generator's
    documented geometry, not its labels.
    """
    low, high = style.dash_gap + np.sqrt(2), style.spacing - 0.5
    assert low < high, "this geometry cannot be read unambiguously"
    markers = marker_centres(image, style)
    assert len(markers) == 2, f"expected two markers, found {len(markers)}"
    ink = np.argwhere(image >= 64)
    pairs = cKDTree(ink).query_pairs((low + high) / 2, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(ink), len(ink)))
    _, component = connected_components(graph, directed=False)
    index = {tuple(pixel): i for i, pixel in enumerate(ink)}
    first, second = (component[index[marker]] for marker in markers)
    return bool(first == second)


def check_generated(tmp_path: Path, resolution: int, difficulty: str, count: int) -> None:
    style = lra_style(resolution, difficulty)
    root = generate_dataset(tmp_path, difficulty, count, seed=resolution, style=style, per_folder=count // 3 + 1)
    files, labels = read_metadata(root)
    assert len(files) == count and labels.sum() == count // 2  # exactly balanced
    for file, label in zip(files, labels):
        image = np.asarray(Image.open(root / file))
        assert image.shape == (resolution, resolution) and image.dtype == np.uint8
        assert markers_connected(image, style) == bool(label), file


def test_generated_labels_agree_with_connectivity(tmp_path: Path) -> None:
    check_generated(tmp_path, 32, HARD, 200)


SIZES = [(32, "curv_baseline", 40), (64, "curv_contour_length_9", 16), (128, HARD, 8)]


@pytest.mark.parametrize(("resolution", "difficulty", "count"), SIZES)
def test_generated_labels_agree_with_connectivity_at_every_size(tmp_path: Path, resolution, difficulty, count) -> None:
    check_generated(tmp_path, resolution, difficulty, count)


def test_label_moves_only_one_marker(tmp_path: Path) -> None:
    """Both classes draw the same paths; the label only decides which end the second marker takes."""
    style = lra_style(32, HARD)
    for seed in range(10):
        negative, positive = (draw_image(style, label, np.random.default_rng(seed)) for label in (0, 1))
        markers = marker_centres(negative, style) + marker_centres(positive, style)
        changed = np.argwhere(negative != positive)
        assert len(changed) and (cKDTree(markers).query(changed)[0] <= style.marker_radius + 1).all()


def test_generator_is_seeded_and_independent_of_workers(tmp_path: Path) -> None:
    style = lra_style(32, "curv_baseline")
    def read(root: Path) -> dict[Path, bytes]:
        return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}

    one = read(generate_dataset(tmp_path / "one", "curv_baseline", 12, 5, style, per_folder=4))
    two = read(generate_dataset(tmp_path / "two", "curv_baseline", 12, 5, style, per_folder=4, workers=2))
    other = read(generate_dataset(tmp_path / "other", "curv_baseline", 12, 6, style, per_folder=4))
    assert one == two and one.keys() == other.keys() and one != other
    assert len(one) == 3 + 12
    with pytest.raises(FileExistsError, match="already holds metadata"):
        generate_dataset(tmp_path / "one", "curv_baseline", 12, 5, style)


def test_knobs_reach_the_images(tmp_path: Path) -> None:
    main(["generate", "--out", str(tmp_path), "--count", "4", "--difficulty", "curv_baseline",
          "--distractors", "0", "--contour-length", "3", "--dash-gap", "0.5"])  # fmt: skip
    root = tmp_path / "pathfinder32" / "curv_baseline"
    row = (root / "metadata" / "0.npy").read_text().splitlines()[0].split()
    assert row[:2] == ["imgs/0", "sample_0.png"] and row[5] == "3" and row[9] == "0.5"
    for file in sorted((root / "imgs" / "0").iterdir()):
        ink = np.asarray(Image.open(file)) >= 128
        assert ndimage.label(ndimage.binary_dilation(ink, iterations=2))[1] <= 2  # two short paths, nothing else


def test_impossible_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed_distance 4.0 leaves no room"):
        main(["generate", "--out", str(tmp_path), "--count", "2", "--seed-distance", "4"])
    with pytest.raises(ValueError, match="resolution must be one of"):
        lra_style(256, HARD)
    with pytest.raises(RuntimeError, match="could not fit two paths of 60 dashes"):
        draw_image(dataclasses.replace(lra_style(32, HARD), contour_length=60), 1, np.random.default_rng(0))


def test_generate_command_as_documented(tmp_path: Path) -> None:
    """The `python -m datamodules.pathfinder generate ...` command the error message prints."""
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "datamodules.pathfinder", "generate", "--out",
               str(tmp_path), "--resolution", "32", "--difficulty", HARD, "--count", "20", "--seed", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert f"wrote 20 images to {tmp_path / 'pathfinder32' / HARD}" in result.stdout
    module = loaded(tmp_path, mode="tokens")
    assert [len(module.datasets[split]) for split in ("train", "val", "test")] == [16, 2, 2]
