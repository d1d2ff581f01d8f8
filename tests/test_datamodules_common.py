"""Shared datamodule machinery: attribute contract, data folders, padding, splits, loaders, download."""

from __future__ import annotations

import io
import re
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import (
    AANDataModule,
    IMDBDataModule,
    ListOpsDataModule,
    MalformedDataError,
    SCIFARDataModule,
    SpeechCommandsDataModule,
)
from datamodules.base import SPLITS
from datamodules.batching import IndexedSubset, TokenDataset, pad_collate, seeded_split
from datamodules.sources import LRA_RELEASE_ROOT, download_lra_files, resolve_data_dir
import datamodules
from data_files import append_line
from test_datamodules_listops import write_listops as write_listops_rows
from test_datamodules_text import write_aan

ALL_MODULES = [ListOpsDataModule, IMDBDataModule, AANDataModule, SCIFARDataModule, SpeechCommandsDataModule]
LISTOPS_ROWS = "( ( ( [MAX 2 ) 9 ) ] )\t9\n( ( ( [MIN 2 ) 9 ) ] )\t2\n"
LISTOPS_FILE = "Source\tTarget\n" + LISTOPS_ROWS


def write_listops(folder: Path, repeat: int = 1) -> Path:
    """basic_{train,val,test}.tsv, each with the two rows repeated."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + LISTOPS_ROWS * repeat)
    return folder


@pytest.mark.parametrize("module_class", ALL_MODULES)
def test_model_facing_attributes_exist_before_setup(module_class, tmp_path: Path) -> None:
    module = module_class(data_dir=str(tmp_path))
    assert isinstance(module.num_classes, int) and module.num_classes >= 2
    assert (module.vocab_size is None) != (module.input_dim is None)
    assert isinstance(module.seq_len, int) and module.seq_len > 0
    assert module.objective in ("classification", "retrieval")
    assert module.datasets == {}


@pytest.mark.parametrize(
    ("module_class", "kwargs", "expected"),
    [
        (ListOpsDataModule, {}, (10, 16, None, 2000, "classification")),
        (IMDBDataModule, {}, (2, 257, None, 4096, "classification")),
        (AANDataModule, {}, (2, 257, None, 4000, "retrieval")),
        (SCIFARDataModule, {"mode": "tokens"}, (10, 257, None, 1024, "classification")),
        (SCIFARDataModule, {"mode": "gray"}, (10, None, 1, 1024, "classification")),
        (SCIFARDataModule, {"mode": "rgb"}, (10, None, 3, 1024, "classification")),
        (SpeechCommandsDataModule, {}, (35, None, 1, 16000, "classification")),
        (SpeechCommandsDataModule, {"subset": "sc10", "mfcc": True}, (10, None, 20, 161, "classification")),
    ],
)
def test_attribute_values(module_class, kwargs, expected) -> None:
    module = module_class(**kwargs)
    assert (module.num_classes, module.vocab_size, module.input_dim, module.seq_len, module.objective) == expected


def test_everything_is_exported() -> None:
    assert {cls.__name__ for cls in ALL_MODULES} <= set(datamodules.__all__)


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ESSSM_DATA", raising=False)
    assert resolve_data_dir(None, "listops") == tmp_path / "data" / "listops"
    monkeypatch.setenv("ESSSM_DATA", str(tmp_path / "shared"))
    assert resolve_data_dir(None, "listops") == tmp_path / "shared" / "listops"
    assert ListOpsDataModule().data_dir == tmp_path / "shared" / "listops"
    assert resolve_data_dir("mine", "listops") == tmp_path / "mine"


def test_pad_collate_tokens_and_continuous() -> None:
    items = [
        {"x": torch.tensor([3, 4, 5]), "y": 1, "index": 7},
        {"x": torch.tensor([6]), "y": 0, "index": 2},
    ]
    batch = pad_collate(items)
    assert batch["x"].tolist() == [[3, 4, 5], [6, 0, 0]]
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["y"].dtype == batch["index"].dtype == torch.long and batch["index"].tolist() == [7, 2]
    frames = [{"x": torch.ones(2, 3), "y": 0, "index": 0}, {"x": torch.ones(1, 3), "y": 0, "index": 1}]
    continuous = pad_collate(frames, pad_to=4)
    assert continuous["x"].shape == (2, 4, 3) and continuous["x"].dtype == torch.float32
    assert continuous["x"][1, 1:].abs().sum() == 0 and continuous["mask"].sum(dim=1).tolist() == [2, 1]


def test_pad_collate_pairs_get_one_mask_each() -> None:
    items = [{"x1": torch.tensor([1, 2]), "x2": torch.tensor([3]), "y": 1, "index": 0}]
    batch = pad_collate(items)
    assert set(batch) == {"x1", "mask1", "x2", "mask2", "y", "index"}
    assert batch["mask2"].tolist() == [[True]]


def test_seeded_split_is_deterministic_disjoint_and_reindexed() -> None:
    dataset = TokenDataset({"x": [np.zeros(1, dtype=np.uint8)] * 20}, list(range(20)), id_offset=1)
    train, val = seeded_split(dataset, 5, seed=3)
    train_again, val_again = seeded_split(dataset, 5, seed=3)
    assert val.indices.tolist() == val_again.indices.tolist()
    assert train.indices.tolist() == train_again.indices.tolist()
    assert seeded_split(dataset, 5, seed=4)[1].indices.tolist() != val.indices.tolist()
    assert sorted([*train.indices.tolist(), *val.indices.tolist()]) == list(range(20))
    assert [val[i]["index"] for i in range(5)] == list(range(5))
    assert [val[i]["y"] for i in range(5)] == val.indices.tolist()  # label = position in the parent here
    with pytest.raises(ValueError, match="val_size"):
        seeded_split(dataset, 20, seed=0)
    assert isinstance(train, IndexedSubset)


def test_loaders_shuffle_only_training_with_the_seed(tmp_path: Path) -> None:
    folder = write_listops(tmp_path, repeat=20)

    def first_indices(seed: int, loader: str) -> list[int]:
        module = ListOpsDataModule(data_dir=str(folder), batch_size=40, seed=seed)
        module.setup("fit")
        return next(iter(getattr(module, loader)()))["index"].tolist()

    assert first_indices(0, "val_dataloader") == list(range(40))
    assert first_indices(0, "train_dataloader") == first_indices(0, "train_dataloader") != list(range(40))
    assert first_indices(1, "train_dataloader") != first_indices(0, "train_dataloader")


def test_loader_with_workers_and_eval_batch_size(tmp_path: Path) -> None:
    folder = write_listops(tmp_path, repeat=8)
    module = ListOpsDataModule(data_dir=str(folder), batch_size=4, eval_batch_size=8, num_workers=2)
    module.setup()
    batches = list(module.test_dataloader())
    assert [len(batch["y"]) for batch in batches] == [8, 8]
    assert torch.cat([batch["index"] for batch in batches]).tolist() == list(range(16))


def test_loader_before_setup_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        ListOpsDataModule().train_dataloader()


def make_lra_archive(path: Path) -> Path:
    """A tiny lra_release.gz: the real task folder plus a decoy copy at the outer level."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in [
            ("lra_release/listops-1000/basic_train.tsv", "decoy"),
            *((f"{LRA_RELEASE_ROOT}/listops-1000/basic_{split}.tsv", LISTOPS_FILE) for split in SPLITS),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_download_lra_files_streams_the_task_folder(tmp_path: Path) -> None:
    archive = make_lra_archive(tmp_path / "lra_release.gz")
    names = ["basic_train.tsv", "basic_val.tsv"]
    download_lra_files(tmp_path / "out", "listops-1000", names, url=archive.as_uri())
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == names
    assert (tmp_path / "out" / "basic_train.tsv").read_text() == LISTOPS_FILE
    with pytest.raises(datamodules.DataFolderError, match="no member"):
        download_lra_files(tmp_path / "out", "tsv_data", ["new_aan_pairs.train.tsv"], url=archive.as_uri())


def test_prepare_data_downloads_only_when_asked_and_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_lra_archive(tmp_path / "lra_release.gz")
    opened: list[str] = []

    def fake_urlopen(url: str):
        opened.append(url)
        return open(archive, "rb")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ListOpsDataModule(data_dir=str(tmp_path / "a")).prepare_data()
    assert opened == []  # download=False never touches the network
    module = ListOpsDataModule(data_dir=str(tmp_path / "a"), download=True)
    module.prepare_data()
    assert opened == [datamodules.sources.LRA_RELEASE_URL]
    module.prepare_data()  # data present: no second download
    assert len(opened) == 1
    module.setup()
    assert module.datasets["train"][0]["y"] == 9


@pytest.mark.parametrize(
    ("module_class", "task_args"),
    [
        (ListOpsDataModule, {"max_len": 256}),
        (IMDBDataModule, {"val_split": "train", "val_size": 100}),
        (AANDataModule, {"max_len": 1000}),
        (SCIFARDataModule, {"mode": "rgb"}),
        (SpeechCommandsDataModule, {"subset": "sc10", "mfcc": True}),
    ],
)
def test_cli_config_reaches_every_argument(module_class, task_args) -> None:
    """LightningCLI (jsonargparse) must see the common arguments forwarded through **kwargs."""
    from jsonargparse import ArgumentParser
    from lightning import LightningDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    common = {"data_dir": "/somewhere", "batch_size": 3, "eval_batch_size": 5, "num_workers": 1, "seed": 7,
              "download": False, "pad_to_max": True}  # fmt: skip
    class_path = f"{module_class.__module__}.{module_class.__name__}"
    config = parser.parse_object({"data": {"class_path": class_path, "init_args": {**common, **task_args}}})
    model_facing = {"num_classes", "seq_len", "vocab_size", "input_dim", "objective"}
    assert model_facing.isdisjoint(vars(config.data.init_args))  # fixed by the class, not configurable
    module = parser.instantiate(config).data
    assert isinstance(module, module_class)
    assert (module.data_dir, module.batch_size, module.eval_batch_size) == (Path("/somewhere"), 3, 5)
    assert (module.num_workers, module.seed, module.download, module.pad_to_max) == (1, 7, False, True)
    assert all(getattr(module, name) == value for name, value in task_args.items())


def test_training_order_follows_seed_and_epoch_so_resume_sees_the_same_order(tmp_path: Path) -> None:
    folder = write_listops(tmp_path, repeat=20)
    module = ListOpsDataModule(data_dir=str(folder), batch_size=40, seed=3)
    module.setup("fit")
    continuous = module.train_dataloader()
    epoch0 = [i for batch in continuous for i in batch["index"].tolist()]
    continuous.sampler.set_epoch(1)
    epoch1 = [i for batch in continuous for i in batch["index"].tolist()]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    resumed = module.train_dataloader()  # a fresh loader, as after a restart in epoch 1
    resumed.sampler.set_epoch(1)
    assert [i for batch in resumed for i in batch["index"].tolist()] == epoch1


MALFORMED_ROWS = [
    *[(ListOpsDataModule, write_listops_rows, "basic_val.tsv", line, problem) for line, problem in [
        ("( [MAX 2 ) 9 ) ] )", "2 tab-separated columns"),
        ("( ( [MAX 2 ) 12 ) ] )\t3", "unknown ListOps token b'12'"),
        ("( ( [MAX 2 ) 9 ) ] )\tnine", "label 'nine' is not a number"),
        ("( ( [MAX 2 ) 9 ) ] )\t10", "outside 0..9"),
        ("( ( [MAX 2 ) 9 ) ] )\tinf", "label 'inf' is not an integer class id"),
        ("( ( [MAX 2 ) 9 ) ] )\t3.7", "label '3.7' is not an integer class id"),
        ("( ( ) )\t3", "Source is empty"),
    ]],
    *[(AANDataModule, write_aan, "new_aan_pairs.eval.tsv", line, problem) for line, problem in [
        ("1\tP1\tP2\tonly four", "expected 5 tab-separated columns"),
        ("yes\tP1\tP2\ta\tb", "not a number"),
        ("2\tP1\tP2\ta\tb", "outside 0..1"),
        ("nan\tP1\tP2\ta\tb", "label 'nan' is not an integer class id"),
        ("1\tP1\tP2\t\tb", "text1 is empty"),
    ]],
]


@pytest.mark.parametrize(("module_class", "write", "file", "bad_line", "problem"), MALFORMED_ROWS,
                         ids=lambda value: value if isinstance(value, str) else "")
def test_a_malformed_row_names_its_file_and_line(tmp_path: Path, module_class, write, file, bad_line, problem) -> None:
    write(tmp_path)
    location = append_line(tmp_path / file, bad_line)
    with pytest.raises(MalformedDataError, match=location + ".*" + re.escape(problem)):
        module_class(data_dir=str(tmp_path)).setup()
