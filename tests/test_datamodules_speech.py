"""Speech Commands v0.02 from a folder in the official layout, WAV files written with soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from datamodules import DataFolderError, MalformedDataError, SpeechCommandsDataModule
from datamodules.base import SPLITS
from datamodules.speech_commands import SC10_WORDS, SC35_WORDS
from data_files import fitted

# word -> (file name, number of samples); files under 16000 samples get padded, longer ones cropped
CLIPS = {
    "yes": [("aa_nohash_0.wav", 16000), ("bb_nohash_0.wav", 8000), ("cc_nohash_0.wav", 12000)],
    "no": [("aa_nohash_0.wav", 16000), ("dd_nohash_1.wav", 20000)],
    "cat": [("aa_nohash_0.wav", 4000), ("ee_nohash_0.wav", 16000)],
}
VALIDATION = ["yes/bb_nohash_0.wav", "cat/ee_nohash_0.wav"]
TESTING = ["no/dd_nohash_1.wav"]


def write_speech_commands(root: Path) -> Path:
    """All 35 word folders (most empty), the two list files and a _background_noise_ folder."""
    rng = np.random.default_rng(0)
    for word in SC35_WORDS:
        (root / word).mkdir(parents=True)
    for word, clips in CLIPS.items():
        for name, samples in clips:
            wave = 0.3 * rng.standard_normal(samples) + 0.1
            soundfile.write(root / word / name, wave, 16000, subtype="PCM_16")
    (root / "_background_noise_").mkdir()
    soundfile.write(root / "_background_noise_" / "noise.wav", np.zeros(32000), 16000, subtype="PCM_16")
    (root / "validation_list.txt").write_text("\n".join(VALIDATION) + "\n")
    (root / "testing_list.txt").write_text("\n".join(TESTING) + "\n")
    return root


@pytest.fixture(scope="module")
def speech_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_speech_commands(tmp_path_factory.mktemp("speech"))


def loaded_module(root: Path, **kwargs) -> SpeechCommandsDataModule:
    return fitted(SpeechCommandsDataModule(data_dir=str(root), batch_size=8, **kwargs))


def test_sc35_splits_labels_and_raw_batches(speech_root: Path) -> None:
    module = loaded_module(speech_root)
    assert [len(module.datasets[split]) for split in SPLITS] == [4, 2, 1]
    batch = next(iter(module.val_dataloader()))
    assert batch["x"].shape == (2, 16000, 1) and batch["x"].dtype == torch.float32
    assert batch["y"].tolist() == [SC35_WORDS.index("cat"), SC35_WORDS.index("yes")]  # sorted word order
    assert batch["mask"].sum(dim=1).tolist() == [16000, 8000] and batch["index"].tolist() == [0, 1]
    assert (batch["x"][1, 8000:] == 0).all()
    test_batch = next(iter(module.test_dataloader()))
    assert test_batch["mask"].sum().item() == 16000  # the 20000-sample clip is cropped to one second


def test_normalisation_uses_training_statistics(speech_root: Path) -> None:
    module = loaded_module(speech_root)
    batch = next(iter(module.train_dataloader()))
    valid = batch["x"][batch["mask"]]
    assert abs(float(valid.mean())) < 1e-4 and abs(float(valid.std()) - 1) < 1e-3
    sub = loaded_module(speech_root, stats_samples=2, seed=5)
    again = loaded_module(speech_root, stats_samples=2, seed=5)
    assert torch.equal(sub.datasets["train"].features.mean, again.datasets["train"].features.mean)
    assert not torch.equal(sub.datasets["train"].features.mean, module.datasets["train"].features.mean)


def test_sc10_keeps_only_its_words(speech_root: Path) -> None:
    module = loaded_module(speech_root, subset="sc10")
    assert module.num_classes == 10 and module.classes == SC10_WORDS
    assert [len(module.datasets[split]) for split in SPLITS] == [3, 1, 1]  # "cat" is not an SC10 word
    labels = {module.datasets["train"][i]["y"] for i in range(3)}
    assert labels == {SC10_WORDS.index("yes"), SC10_WORDS.index("no")}


def test_mfcc_features(speech_root: Path) -> None:
    module = loaded_module(speech_root, mfcc=True)
    batch = next(iter(module.val_dataloader()))
    assert batch["x"].shape == (2, 161, 20) and module.input_dim == 20 and module.seq_len == 161
    assert batch["mask"].sum(dim=1).tolist() == [161, 81]  # frames of 100 samples (+1, centred)
    assert torch.isfinite(batch["x"]).all() and (batch["x"][1, 81:] == 0).all()


def test_pad_to_batch_longest_when_asked(speech_root: Path) -> None:
    module = loaded_module(speech_root, pad_to_max=False)
    lengths = [len(module.datasets["train"][i]["x"]) for i in range(4)]
    assert sorted(lengths) == [4000, 12000, 16000, 16000]


def test_missing_folder_and_bad_wave(tmp_path: Path) -> None:
    with pytest.raises(DataFolderError) as error:
        SpeechCommandsDataModule(data_dir=str(tmp_path)).setup()
    for expected in (str(tmp_path), "validation_list.txt", "speech_commands_v0.02", "download: true"):
        assert expected in str(error.value)
    root = write_speech_commands(tmp_path / "sc")
    soundfile.write(root / "yes" / "zz_nohash_0.wav", np.zeros(8000), 8000, subtype="PCM_16")
    with pytest.raises(MalformedDataError, match="zz_nohash_0.wav: expected 16 kHz mono"):
        loaded_module(root)  # the statistics read every training clip


@pytest.mark.parametrize(
    ("wave", "problem"),
    [(np.zeros(0), "holds no samples"), (np.r_[np.zeros(10), np.nan, np.zeros(10)], "sample 10 is nan")],
)
def test_empty_and_non_finite_waves_are_named(tmp_path: Path, wave: np.ndarray, problem: str) -> None:
    root = write_speech_commands(tmp_path / "sc")
    soundfile.write(root / "yes" / "zz_nohash_0.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(MalformedDataError, match=f"zz_nohash_0.wav: .*{problem}"):
        loaded_module(root)  # the statistics read every training clip


def test_sc10_needs_only_its_ten_word_folders(tmp_path: Path) -> None:
    root = write_speech_commands(tmp_path / "sc")
    for word in set(SC35_WORDS) - set(SC10_WORDS):
        for path in (root / word).glob("*.wav"):
            path.unlink()
        (root / word).rmdir()
    assert [len(loaded_module(root, subset="sc10").datasets[s]) for s in SPLITS] == [3, 1, 1]
    with pytest.raises(DataFolderError, match="backward"):
        loaded_module(root, subset="sc35")


@pytest.mark.parametrize(
    ("list_name", "entries", "error", "problem"),
    [
        ("testing_list.txt", ["no/dd_nohash_1.wav", "no/gone_nohash_0.wav"], DataFolderError,
         "testing_list.txt:2: lists no/gone_nohash_0.wav, but .*no has no such .wav file"),
        ("validation_list.txt", ["yes/bb_nohash_0.wav", "", "cat/zz.wav"], DataFolderError,
         "validation_list.txt:3: lists cat/zz.wav"),
        ("validation_list.txt", ["no/dd_nohash_1.wav"], MalformedDataError,
         "testing_list.txt:1: no/dd_nohash_1.wav is also listed in .*validation_list.txt:1"),
        ("testing_list.txt", ["no/dd_nohash_1.wav", "nope/aa_nohash_0.wav"], MalformedDataError,
         "testing_list.txt:2: 'nope/aa_nohash_0.wav' is not a word/file.wav name"),
    ],
)  # fmt: skip
def test_list_entries_name_real_clips(tmp_path: Path, list_name: str, entries: list[str], error, problem: str) -> None:
    """A missing held-out clip would silently shrink a split (a wrong list can empty it and
    train on the clips it meant), a clip on both lists would leave one of them: the list file
    and line are named instead."""
    root = write_speech_commands(tmp_path / "sc")
    (root / list_name).write_text("\n".join(entries) + "\n")
    with pytest.raises(error, match=problem):
        loaded_module(root)


def test_damaged_wave_is_named(tmp_path: Path) -> None:
    root = write_speech_commands(tmp_path / "sc")
    clip = root / "yes" / "aa_nohash_0.wav"
    clip.write_bytes(clip.read_bytes()[:30])  # cut inside the header
    with pytest.raises(MalformedDataError, match="aa_nohash_0.wav is not a readable WAV file .*data set again"):
        loaded_module(root)
    with pytest.raises(MalformedDataError, match="aa_nohash_0.wav is not a readable WAV file"):
        loaded_module(root, subset="sc10", split="s4")  # the S4 split reads every clip's length
