"""Speech Commands v0.02 keyword classification (SC35: all 35 words; SC10: 10 of them).

Layout: one folder per word of 16 kHz mono WAV files; validation_list.txt and
testing_list.txt name the held-out files ("word/file.wav"), every other file of a word
folder is training data; _background_noise_ is ignored. A listed clip that does not exist
is an error naming the list file and line (it would silently join no split). WAV files are
read with soundfile (torchaudio.load needs torchcodec).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.archives import extract_tar_file
from datamodules.base import TaskDataModule
from datamodules.batching import LabelledDataset
from datamodules.parsing import MalformedDataError, malformed
from datamodules.sources import DataFolderError

SAMPLE_RATE = 16_000
NUM_SAMPLES = 16_000  # one second; longer files are cropped, shorter ones padded
SC35_WORDS = tuple(sorted((
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)))  # fmt: skip
SC10_WORDS = tuple(sorted(("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")))
SUBSETS = {"sc35": SC35_WORDS, "sc10": SC10_WORDS}
LIST_FILES = {"val": "validation_list.txt", "test": "testing_list.txt"}
ARCHIVE_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
ARCHIVE_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"  # as torchaudio checks it
# MFCC as in Kidger et al. (neural CDEs) and S4's SC10: 20 coefficients of 64 log-mel bands,
# n_fft 200 with the default hop n_fft // 2 = 100 samples, centred frames: 161 per second.
N_MFCC = 20
MFCC_HOP = 100
MFCC_MELS = 64
MFCC_FRAMES = NUM_SAMPLES // MFCC_HOP + 1


def read_wave(path: Path) -> Tensor:
    """The first NUM_SAMPLES samples of a 16 kHz mono WAV file as a float32 (T,) tensor.

    Refuses, naming the file: files libsndfile cannot open (damaged headers, not a WAV), other
    rates or channel counts, files with no samples, and samples that are NaN or infinite (float
    WAVs can hold them; one would make the loss NaN).
    """
    try:
        wave, sample_rate = soundfile.read(path, dtype="float32", frames=NUM_SAMPLES)
    except soundfile.LibsndfileError as error:
        raise unreadable_wave(path, error) from None
    if sample_rate != SAMPLE_RATE or wave.ndim != 1:
        raise MalformedDataError(f"{path}: expected 16 kHz mono; got {sample_rate} Hz, shape {wave.shape}")
    if len(wave) == 0:
        raise MalformedDataError(f"{path}: the WAV file holds no samples (0 frames)")
    if not np.isfinite(wave).all():
        first = int(np.flatnonzero(~np.isfinite(wave))[0])
        raise MalformedDataError(f"{path}: sample {first} is {wave[first]} (WAV samples must be finite)")
    return torch.from_numpy(wave)


def wave_frames(path: Path) -> int:
    """The number of samples in a WAV file, from its header."""
    try:
        return soundfile.info(path).frames
    except soundfile.LibsndfileError as error:
        raise unreadable_wave(path, error) from None


def unreadable_wave(path: Path, error: soundfile.LibsndfileError) -> MalformedDataError:
    return MalformedDataError(
        f"{path} is not a readable WAV file ({error.error_string}): the clip is damaged; "
        "extract or download the data set again"
    )


class WaveFeatures:
    """Turns a waveform (T,) into normalised model input (T', C): raw (T, 1) or MFCC (frames, 20).

    ``mean``/``std`` (C,) come from training data (``fit``); before that they are 0 and 1.
    """

    def __init__(self, mfcc: bool) -> None:
        self.mfcc = self._mfcc_transform() if mfcc else None
        channels = N_MFCC if mfcc else 1
        self.mean = torch.zeros(channels)
        self.std = torch.ones(channels)

    @staticmethod
    def _mfcc_transform() -> torch.nn.Module:
        import torchaudio

        with warnings.catch_warnings():  # 64 bands on 101 frequency bins leave some empty: expected here
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            return torchaudio.transforms.MFCC(
                sample_rate=SAMPLE_RATE,
                n_mfcc=N_MFCC,
                log_mels=True,
                melkwargs={"n_fft": 2 * MFCC_HOP, "n_mels": MFCC_MELS},
            )

    def raw(self, wave: Tensor) -> Tensor:
        """Unnormalised features (T', C)."""
        if self.mfcc is None:
            return wave[:, None]
        return self.mfcc(wave).T

    def __call__(self, wave: Tensor) -> Tensor:
        return (self.raw(wave) - self.mean) / self.std

    def fit(self, waves: list[Tensor]) -> None:
        """Per-channel mean and std over all time steps of these (training) waveforms."""
        features = torch.cat([self.raw(wave) for wave in waves])
        self.mean = features.mean(dim=0)
        self.std = features.std(dim=0).clamp_min(1e-8)


class SpeechDataset(LabelledDataset):
    """Files with labels; items are {"x": (T', C) float, "y", "index"}, read on access."""

    def __init__(self, paths: list[Path], labels: list[int], features: WaveFeatures) -> None:
        super().__init__(labels)
        self.paths = paths
        self.features = features

    def inputs(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.features(read_wave(self.paths[index]))}


def read_file_list(path: Path) -> dict[str, int]:
    """The "word/file.wav" entries of validation_list.txt / testing_list.txt -> line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise MalformedDataError(f"{path}: not a UTF-8 list of word/file.wav names ({error})") from None
    entries: dict[str, int] = {}
    for line_number, line in enumerate(lines, start=1):
        if line.strip():
            entries.setdefault(line.strip(), line_number)
    return entries


def check_file_lists(root: Path, held_out: dict[str, dict[str, int]], paths: dict[str, list[Path]]) -> None:
    """Refuse list entries that would silently move clips between splits, naming list file and line:
    an entry that is no word/file.wav of a Speech Commands word, a clip of a word read (a key of
    ``paths``, the word's .wav files) that is not there, and a clip on both lists."""
    clips = {f"{word}/{path.name}" for word, word_paths in paths.items() for path in word_paths}
    seen: dict[str, tuple[Path, int]] = {}
    for split, entries in held_out.items():
        list_path = root / LIST_FILES[split]
        for entry, line in entries.items():
            word, _, name = entry.partition("/")
            if word not in SC35_WORDS or not name.endswith(".wav"):
                raise malformed(list_path, line, f"{entry!r} is not a word/file.wav name of a Speech Commands word")
            if word in paths and entry not in clips:
                raise DataFolderError(
                    f"{list_path}:{line}: lists {entry}, but {root / word} has no such .wav file; "
                    "restore the clip (re-extract the data set) or correct the list"
                )
            if entry in seen:
                other, other_line = seen[entry]
                raise malformed(list_path, line, f"{entry} is also listed in {other}:{other_line}")
            seen[entry] = (list_path, line)


def split_files(root: Path, words: tuple[str, ...]) -> dict[str, list[tuple[Path, int]]]:
    """(path, label) per split; label = position of the word in ``words``; files sorted."""
    held_out = {split: read_file_list(root / name) for split, name in LIST_FILES.items()}
    paths = {word: sorted((root / word).glob("*.wav")) for word in words}
    check_file_lists(root, held_out, paths)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for label, word in enumerate(words):
        for path in paths[word]:
            relative = f"{word}/{path.name}"
            split = next((name for name, files in held_out.items() if relative in files), "train")
            splits[split].append((path, label))
    return splits


S4_FRACTIONS = (0.7, 0.15)  # train, val; the rest is test


def s4_split_files(root: Path, words: tuple[str, ...], seed: int) -> dict[str, list[tuple[Path, int]]]:
    """The S4 codebase's SC10 split: clips shorter than one second are dropped, then each word's
    clips are split at random 70/15/15 (stratified by word, seeded). The list files are ignored.

    S4 draws its split with scikit-learn over files in directory-listing order, so the exact
    membership differs; the procedure (and so what the numbers measure) is the same.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for label, word in enumerate(words):
        paths = [p for p in sorted((root / word).glob("*.wav")) if wave_frames(p) == NUM_SAMPLES]
        shuffled = [paths[i] for i in rng.permutation(len(paths))]
        n_train, n_val = (round(f * len(paths)) for f in S4_FRACTIONS)
        parts = {"train": shuffled[:n_train], "val": shuffled[n_train : n_train + n_val],
                 "test": shuffled[n_train + n_val :]}
        for split, chosen in parts.items():
            splits[split] += [(path, label) for path in sorted(chosen)]
    return splits


class SpeechCommandsDataModule(TaskDataModule):
    """Speech Commands v0.02, SC35 (35 classes) or SC10 (10 classes); labels follow sorted word order.

    Batches: x (B, 16000, 1) float raw audio, or (B, 161, 20) MFCC with ``mfcc``; mask
    (B, T) True over the recorded part of each clip; y (B,); index (B,). Inputs are
    normalised with mean/std from up to ``stats_samples`` training clips (seeded choice).
    Clips are padded to the full second (``pad_to_max`` True by default, as S4).
    """

    folder_name = "speech_commands"
    expected_files = (*LIST_FILES.values(), *SC35_WORDS)
    subfolders = ("SpeechCommands/speech_commands_v0.02",)
    train_examples = 84_843  # Speech Commands v0.02 SC35 training clips (official lists)

    def __init__(
        self,
        subset: Literal["sc35", "sc10"] = "sc35",
        mfcc: bool = False,
        stats_samples: int = 2000,
        pad_to_max: bool = True,
        split: Literal["official", "s4"] = "official",
        **kwargs: Any,
    ) -> None:
        """Common arguments (data_dir, batch_size, ...): see TaskDataModule.

        Args:
            subset: "sc35" (all words) or "sc10" (yes, no, up, down, left, right, on, off, stop, go).
            mfcc: 20 MFCCs per 100-sample hop (161 frames) instead of the raw 16000 samples.
            stats_samples: training clips read for the normalisation mean/std.
            pad_to_max: pad every clip to one second (default, as S4) instead of the batch's longest.
            split: "official" (validation_list.txt / testing_list.txt) or "s4" (SC10 only: the S4
                codebase's split, short clips dropped, stratified random 70/15/15), so SC10
                numbers can be compared with published S4-family results.
        """
        if split not in ("official", "s4"):
            raise ValueError(f"split must be 'official' or 's4', got {split!r}")
        if split == "s4" and subset != "sc10":
            raise ValueError(
                "split='s4' is the S4 codebase's SC10 split; its SC35 uses the official lists: "
                "use split='official' with subset='sc35'"
            )
        super().__init__(
            pad_to_max=pad_to_max,
            num_classes=len(SUBSETS[subset]),
            seq_len=MFCC_FRAMES if mfcc else NUM_SAMPLES,
            vocab_size=None,
            input_dim=N_MFCC if mfcc else 1,
            objective="classification",
            **kwargs,
        )
        self.subset = subset
        self.classes = SUBSETS[subset]
        self.expected_files = (*LIST_FILES.values(), *self.classes)  # SC10 needs only its 10 word folders
        self.mfcc = mfcc
        self.stats_samples = stats_samples
        self.split = split

    def how_to_get(self) -> str:
        return (
            f"set download: true (fetches {ARCHIVE_URL} into {self.data_dir} and extracts it to "
            f"{self.subfolders[0]}), or extract that archive into {self.data_dir}."
        )

    def _download(self) -> None:
        """The official archive (sha256-checked, kept beside the data as torchaudio does), extracted
        by datamodules.archives into torchaudio's layout."""
        archive = self.data_dir / ARCHIVE_URL.rsplit("/", 1)[1]
        if not archive.is_file():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(ARCHIVE_URL, str(archive), hash_prefix=ARCHIVE_SHA256)
        extract_tar_file(archive, self.data_dir / self.subfolders[0])

    def _load_splits(self) -> dict[str, Dataset]:
        root = self.data_root()
        files = s4_split_files(root, self.classes, self.seed) if self.split == "s4" else split_files(root, self.classes)
        if not files["train"]:
            raise MalformedDataError(f"{root}: no training .wav files in {', '.join(self.classes)}")
        features = WaveFeatures(self.mfcc)
        splits = {
            split: SpeechDataset([path for path, _ in pairs], [label for _, label in pairs], features)
            for split, pairs in files.items()
        }
        features.fit(self._stats_waves(splits["train"].paths))
        return splits

    def _stats_waves(self, paths: list[Path]) -> list[Tensor]:
        """Up to stats_samples training waveforms, chosen with the seed (same on every rank)."""
        count = min(self.stats_samples, len(paths))
        chosen = np.random.default_rng(self.seed).choice(len(paths), size=count, replace=False)
        return [read_wave(paths[index]) for index in np.sort(chosen)]
