"""Byte-level tasks: IMDb (aclImdb tree, saved HF dataset, offline HF cache) and AAN retrieval pairs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` is imported anywhere

import re
from pathlib import Path

import pytest
import torch

from datamodules import AANDataModule, DataFolderError, IMDBDataModule, MalformedDataError

REVIEWS = {
    "train": {"pos": ["Great film!", "Loved it \u2764"], "neg": ["Awful.", "Boring plot", "No"]},
    "test": {"pos": ["Superb"], "neg": ["Bad", "Meh."]},
}


def byte_ids(text: str) -> list[int]:
    return [byte + 1 for byte in text.encode("utf-8")]


def write_aclimdb(root: Path) -> Path:
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt plus the unsup folder the loader must ignore."""
    for split, labels in REVIEWS.items():
        for label, texts in labels.items():
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for number, text in enumerate(texts):
                (folder / f"{number}_{8 if label == 'pos' else 2}.txt").write_bytes(text.encode("utf-8"))
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    return root


def hf_imdb():
    """The REVIEWS as a DatasetDict shaped like HF "stanfordnlp/imdb" (text, label; neg 0, pos 1)."""
    import datasets

    def split(texts: dict[str, list[str]]) -> datasets.Dataset:
        labels = [0] * len(texts["neg"]) + [1] * len(texts["pos"])
        return datasets.Dataset.from_dict({"text": texts["neg"] + texts["pos"], "label": labels})

    return datasets.DatasetDict({name: split(texts) for name, texts in REVIEWS.items()})


def test_imdb_reads_aclimdb_tree(tmp_path: Path) -> None:
    module = IMDBDataModule(data_dir=str(write_aclimdb(tmp_path)), batch_size=5)
    module.setup("fit")
    assert [len(module.datasets[split]) for split in ("train", "val", "test")] == [5, 3, 3]
    assert module.datasets["val"] is module.datasets["test"]  # LRA validates on the test split
    batch = next(iter(module.val_dataloader()))
    assert batch["y"].tolist() == [0, 0, 1]  # neg then pos, files sorted
    assert batch["x"].dtype == torch.long and batch["x"].shape == (3, 6)
    assert batch["x"][0, :3].tolist() == byte_ids("Bad") and batch["mask"].sum(dim=1).tolist() == [3, 4, 6]
    train = module.datasets["train"]
    assert train[4]["x"].tolist() == byte_ids("Loved it \u2764")  # multi-byte UTF-8 as bytes
    assert int(train[4]["x"].max()) <= 256


def test_imdb_truncates_and_holds_out_training_reviews(tmp_path: Path) -> None:
    write_aclimdb(tmp_path)
    folder = str(tmp_path / "aclImdb")
    module = IMDBDataModule(data_dir=folder, max_len=4, val_split="train", val_size=2, seed=1)
    module.setup()
    assert [len(module.datasets[split]) for split in ("train", "val", "test")] == [3, 2, 3]
    assert max(len(module.datasets["train"][i]["x"]) for i in range(3)) == 4
    again = IMDBDataModule(data_dir=str(tmp_path), val_split="train", val_size=2, seed=1)
    again.setup()
    assert module.datasets["val"].indices.tolist() == again.datasets["val"].indices.tolist()


def test_imdb_reads_saved_hf_dataset(tmp_path: Path) -> None:
    hf_imdb().save_to_disk(str(tmp_path / "imdb_hf"))
    module = IMDBDataModule(data_dir=str(tmp_path))
    module.setup()
    assert len(module.datasets["train"]) == 5
    superb = module.datasets["test"][2]
    assert superb["x"].tolist() == byte_ids("Superb") and superb["y"] == 1


def test_imdb_empty_review_and_bad_hf_label_are_named(tmp_path: Path) -> None:
    import datasets

    root = write_aclimdb(tmp_path / "tree")
    empty = root / "aclImdb" / "test" / "pos" / "9_1.txt"
    empty.write_text("")
    with pytest.raises(MalformedDataError, match=re.escape(f"{empty}: review is empty")):
        IMDBDataModule(data_dir=str(root)).setup()
    broken = hf_imdb()
    broken["test"] = datasets.Dataset.from_dict({"text": ["fine", "also fine"], "label": [1, 7]})
    broken.save_to_disk(str(tmp_path / "hf" / "imdb_hf"))
    with pytest.raises(MalformedDataError, match=r"imdb_hf \(test split\): entry 1: label 7 is outside 0\.\.1"):
        IMDBDataModule(data_dir=str(tmp_path / "hf")).setup()


def test_imdb_uses_hf_cache_only_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[str] = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: calls.append(name) or hf_imdb())
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(DataFolderError):
        IMDBDataModule(data_dir=str(tmp_path)).setup()
    assert calls == []  # online: setup must not reach for the hub
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    module = IMDBDataModule(data_dir=str(tmp_path))
    module.setup()
    assert calls == ["stanfordnlp/imdb"] and len(module.datasets["test"]) == 3


def test_imdb_missing_folder_error(tmp_path: Path) -> None:
    with pytest.raises(DataFolderError) as error:
        IMDBDataModule(data_dir=str(tmp_path / "none")).setup()
    message = str(error.value)
    folder = str(tmp_path / "none")
    for expected in (folder, "train/pos", "aclImdb_v1.tar.gz", "download: true", "HF_HUB_OFFLINE=1"):
        assert expected in message


# ----------------------------------------------------------------------------- AAN

AAN_ROWS = [
    # label, id1, id2, text1, text2 (LRA writes labels as floats; texts may hold quotes)
    ("1.0", "P01-1001", "P02-2002", 'He said "hi', "abc"),
    ("0.0", "P03-3003", "P04-4004", "x", "longer text here"),
    ("1", "P05-5005", "P06-6006", "it's", "q"),
]


def write_aan(folder: Path, rows=AAN_ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "eval", "test"):
        text = "".join("\t".join(row) + "\n" for row in rows)
        (folder / f"new_aan_pairs.{part}.tsv").write_text(text)
    return folder


def test_aan_batches_carry_both_documents(tmp_path: Path) -> None:
    module = AANDataModule(data_dir=str(write_aan(tmp_path)), batch_size=3)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert set(batch) == {"x1", "mask1", "x2", "mask2", "y", "index"}
    assert batch["y"].tolist() == [1, 0, 1] and batch["index"].tolist() == [0, 1, 2]
    assert batch["x1"].shape == (3, 11) and batch["x2"].shape == (3, 16)
    assert batch["x1"][0].tolist() == byte_ids('He said "hi')  # quoting off: the quote is a byte
    assert batch["mask1"].sum(dim=1).tolist() == [11, 1, 4]
    assert batch["mask2"].sum(dim=1).tolist() == [3, 16, 1]
    assert (batch["x2"][~batch["mask2"]] == 0).all()


def test_aan_truncates_each_document(tmp_path: Path) -> None:
    module = AANDataModule(data_dir=str(write_aan(tmp_path)), batch_size=3, max_len=5, pad_to_max=True)
    module.setup()
    batch = next(iter(module.test_dataloader()))
    assert batch["x1"].shape == batch["x2"].shape == (3, 5)
    assert batch["mask2"].sum(dim=1).tolist() == [3, 5, 1]


def test_aan_finds_lra_release_folder(tmp_path: Path) -> None:
    write_aan(tmp_path / "lra_release" / "lra_release" / "tsv_data")
    module = AANDataModule(data_dir=str(tmp_path))
    module.setup()
    assert len(module.datasets["train"]) == 3


def test_aan_missing_folder_error(tmp_path: Path) -> None:
    (tmp_path / "new_aan_pairs.train.tsv").write_text("")
    with pytest.raises(DataFolderError) as error:
        AANDataModule(data_dir=str(tmp_path)).setup()
    message = str(error.value)
    assert "lacks new_aan_pairs.eval.tsv, new_aan_pairs.test.tsv" in message and "lra_release.gz" in message
