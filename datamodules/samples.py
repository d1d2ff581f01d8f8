"""Small data sets in each task's release format, at the real sequence lengths.

`./reproduce.sh --full --smoke` and its test train the real configs on these, so every reader
runs exactly as on the downloaded data. Contents are random (nothing to learn); formats,
folder layouts and lengths are the releases': the LRA ListOps generator, an aclImdb tree, AAN
tsv files, CIFAR-10 pickles, Speech Commands v0.02 WAVs with their list files, and the
Pathfinder generator. The byte LM reads the Python standard library (``python_stdlib``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


def _text(rng: np.random.Generator, n_bytes: int) -> str:
    """Random lowercase words totalling about n_bytes bytes (ASCII, no tabs or newlines)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(n_bytes // 5 + 1)]
    return " ".join(words)[:n_bytes]


def write_listops(folder: Path, count: int, seed: int = 0) -> Path:
    """basic_{train,val,test}.tsv from the LRA generator at LRA's lengths (500-2000)."""
    from datamodules.listops_generator import generate_dataset

    generate_dataset(folder, {"train": count, "val": count, "test": count}, 500, 2000, 10, 10, seed)
    return folder


def write_aclimdb(folder: Path, count: int, seed: int = 0) -> Path:
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, reviews of 4-6 KB (cut to 4096 bytes)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label, rating in (("pos", 8), ("neg", 2)):
            target = folder / "aclImdb" / split / label
            target.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                text = _text(rng, int(rng.integers(4000, 6000)))
                (target / f"{number}_{rating}.txt").write_text(text)
    return folder


def write_aan(folder: Path, count: int, seed: int = 0) -> Path:
    """new_aan_pairs.{train,eval,test}.tsv: label, id1, id2, text1, text2 (documents of 4-6 KB)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "eval", "test"):
        rows = [
            f"{i % 2}.0\tP{i:02d}-1001\tP{i:02d}-2002\t{_text(rng, 5000)}\t{_text(rng, 4500)}\n"
            for i in range(count)
        ]
        (folder / f"new_aan_pairs.{part}.tsv").write_text("".join(rows))
    return folder


def write_cifar(folder: Path, count: int, seed: int = 0) -> Path:
    """cifar-10-batches-py: data_batch_1..5 and test_batch (count images each), batches.meta."""
    rng = np.random.default_rng(seed)
    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, count)],
            b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
        }
        (target / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (target / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_speech_commands(folder: Path, count: int, seed: int = 0) -> Path:
    """v0.02 layout: one folder per word with 16 kHz 16-bit WAVs (some shorter than one second),
    validation_list.txt, testing_list.txt and an ignored _background_noise_ folder. Each of the
    35 words gets `count` training clips and one validation and one test clip."""
    import soundfile

    from datamodules.speech_commands import SC35_WORDS

    rng = np.random.default_rng(seed)
    held_out: dict[str, list[str]] = {"validation": [], "testing": []}
    for word in SC35_WORDS:
        (folder / word).mkdir(parents=True, exist_ok=True)
        names = [f"{i:08x}_nohash_0.wav" for i in range(count + 2)]
        for name in names:
            samples = SAMPLE_RATE if rng.random() < 0.8 else int(rng.integers(SAMPLE_RATE // 2, SAMPLE_RATE))
            soundfile.write(folder / word / name, 0.1 * rng.standard_normal(samples), SAMPLE_RATE, subtype="PCM_16")
        held_out["validation"].append(f"{word}/{names[-2]}")
        held_out["testing"].append(f"{word}/{names[-1]}")
    (folder / "_background_noise_").mkdir(exist_ok=True)
    soundfile.write(folder / "_background_noise_" / "noise.wav", np.zeros(SAMPLE_RATE), SAMPLE_RATE)
    for split, files in held_out.items():
        (folder / f"{split}_list.txt").write_text("\n".join(files) + "\n")
    return folder


def write_pathfinder(folder: Path, count: int, seed: int = 0, resolution: int = 32) -> Path:
    """pathfinder<resolution>/curv_contour_length_14 (metadata + PNGs) from the project's generator."""
    from datamodules.pathfinder_generator import generate_dataset, lra_style

    difficulty = "curv_contour_length_14"
    generate_dataset(folder, difficulty, 3 * count, seed, lra_style(resolution, difficulty))
    return folder


def write_pathx(folder: Path, count: int, seed: int = 0) -> Path:
    """Path-X: pathfinder128/curv_contour_length_14."""
    return write_pathfinder(folder, count, seed, resolution=128)


# task -> writer(folder, examples per split); the LM needs none (it reads the Python stdlib).
WRITERS: dict[str, Callable[[Path, int], Path]] = {
    "listops": write_listops,
    "text": write_aclimdb,
    "retrieval": write_aan,
    "scifar": write_cifar,
    "speech": write_speech_commands,
    "pathfinder": write_pathfinder,
    "pathx": write_pathx,
}
