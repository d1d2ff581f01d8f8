"""Speech Commands SC10 with the S4 codebase's split (short clips dropped, stratified 70/15/15)."""

from pathlib import Path

import pytest
import soundfile

from datamodules import SpeechCommandsDataModule
from datamodules.samples import write_speech_commands
from datamodules.speech_commands import NUM_SAMPLES, SC10_WORDS


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_speech_commands(tmp_path_factory.mktemp("speech"), count=38)  # 40 clips per word


def s4_module(root: Path, **kw) -> SpeechCommandsDataModule:
    module = SpeechCommandsDataModule(data_dir=str(root), subset="sc10", split="s4", batch_size=4, **kw)
    module.setup("fit")
    return module


def test_s4_split_drops_short_clips_and_is_stratified_70_15_15(root):
    module = s4_module(root)
    splits = {name: module.datasets[name] for name in ("train", "val", "test")}
    paths = {name: set(d.paths) for name, d in splits.items()}
    assert not (paths["train"] & paths["val"]) and not (paths["train"] & paths["test"]) and not (paths["val"] & paths["test"])
    for word_label, word in enumerate(SC10_WORDS):
        full = [p for p in (root / word).glob("*.wav") if soundfile.info(p).frames == NUM_SAMPLES]
        counts = {name: sum(label == word_label for label in d.labels) for name, d in splits.items()}
        assert sum(counts.values()) == len(full) < 40  # every one-second clip, no short one
        assert counts["train"] == round(0.7 * len(full)) and counts["val"] == round(0.15 * len(full))
    used = set().union(*paths.values())
    assert all(soundfile.info(p).frames == NUM_SAMPLES for p in used)
    official = SpeechCommandsDataModule(data_dir=str(root), subset="sc10", batch_size=4)
    official.setup("fit")
    assert set(official.datasets["val"].paths) != paths["val"]  # the list files are not used


def test_s4_split_is_seeded(root):
    assert s4_module(root).datasets["val"].paths == s4_module(root).datasets["val"].paths
    assert s4_module(root).datasets["val"].paths != s4_module(root, seed=1).datasets["val"].paths


def test_s4_split_needs_sc10(root):
    with pytest.raises(ValueError, match="SC35 uses the official lists"):
        SpeechCommandsDataModule(data_dir=str(root), subset="sc35", split="s4")
    with pytest.raises(ValueError, match="'official' or 's4'"):
        SpeechCommandsDataModule(data_dir=str(root), subset="sc10", split="random")
