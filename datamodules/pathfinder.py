"""LRA Pathfinder and Path-X: the datamodule over the LRA release layout, and a generator.

Each image shows two marker dots and dashed curved paths; the label is 1 when the dots
lie on the two ends of the same path. LRA release layout (``lra_release/pathfinder{32,64,128}``;
Path-X is pathfinder128)::

    pathfinder32/<difficulty>/metadata/<n>.npy         one image per row (plain text despite the suffix)
    pathfinder32/<difficulty>/imgs/<n>/sample_<i>.png  grayscale, 32 x 32

A metadata row is ``imgs/<n> sample_<i>.png <i> <label> ...``: image folder, file name,
image number, label, then the generator's settings (LRA's TFDS builder and the S4 loader read
columns 0, 1 and 3 the same way). Difficulties: curv_baseline (paths of 6 dashes),
curv_contour_length_9 and curv_contour_length_14.

The generator draws LRA-like images with its own code (not the original generator's pixels):
two marked paths and distractors built from short dashes, with a spacing between paths that
makes the label readable from the pixels (see PathStyle). Generate a data set with no download
(LRA's size: 200k images, split 80/10/10 when read)::

    python -m datamodules.pathfinder generate --out data/pathfinder --resolution 32 --count 200000 --workers 2
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules import base
from datamodules.base import (
    LRA_RELEASE_ROOT,
    DataFolderError,
    LRAReleaseDataModule,
    MalformedDataError,
    generate_command,
    lra_archive_files,
    malformed,
    parse_label,
    seeded_split,
)
from esssm.batch import BYTE_VOCAB_SIZE
from esssm.files import atomic_write, atomic_write_bytes, atomic_write_text

RESOLUTIONS = (32, 64, 128)
CONTOUR_LENGTHS = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
Difficulty = Literal["curv_baseline", "curv_contour_length_9", "curv_contour_length_14"]
NUM_CLASSES = 2
NPY_MAGIC = b"\x93NUMPY"
METADATA_COLUMNS = "image folder, file name, image number, label"

# ----------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class PathStyle:
    """Geometry of generated images, in pixels (pixel centres sit at integer coordinates).

    Guarantees a reader can rely on: consecutive dashes of a path are ``dash_gap`` apart
    along it; the inked outlines (centre line +- thickness/2, marker discs) of different
    paths, and of parts of one path more than a few dashes apart, stay ``spacing`` apart.
    So a gap-bridging reader with reach between dash_gap and spacing sees each path as one
    piece, and the two markers connected exactly when the label is 1.
    """

    size: int
    contour_length: int  # dashes per marked path
    distractors: int  # distractor paths (as many as fit)
    distractor_length: int  # dashes per distractor
    dash_length: float
    dash_gap: float
    thickness: float
    marker_radius: float
    spacing: float
    seed_distance: float  # between the starts of the two marked paths (LRA's seed_distance)
    max_turn: float  # degrees of heading change per dash (curvature bound)
    padding: float = 1.0

    def __post_init__(self) -> None:
        lengths = (self.dash_length, self.dash_gap, self.thickness, self.marker_radius, self.spacing, self.max_turn)
        if self.contour_length < 1 or self.distractors < 0 or self.distractor_length < 1 or min(lengths) <= 0:
            raise ValueError(f"path lengths and sizes must be positive (distractors may be 0): {self}")
        if self.seed_distance < 2 * self.marker_radius + self.spacing:
            raise ValueError(
                f"seed_distance {self.seed_distance} leaves no room between the two start markers: "
                f"it must be at least 2 * marker_radius + spacing = {2 * self.marker_radius + self.spacing}"
            )


# LRA's settings per resolution (paddle length/margin, marker radius, seed distance, distractor
# dashes 20/22/35), with gaps and spacings widened so that paths stay separable (see PathStyle).
BASE_STYLES = {
    32: dict(dash_length=1.5, dash_gap=0.75, thickness=1.0, marker_radius=1.5, spacing=3.0, seed_distance=7.0),
    64: dict(dash_length=4.0, dash_gap=2.0, thickness=1.5, marker_radius=2.5, spacing=5.0, seed_distance=12.0),
    128: dict(dash_length=6.0, dash_gap=3.0, thickness=2.0, marker_radius=3.0, spacing=7.0, seed_distance=20.0),
}
DISTRACTOR_DASHES = {32: 20, 64: 22, 128: 35}
MAX_TURN = 45.0  # LRA's continuity 1.0 weights turns by cos^2 up to 90 degrees
CANDIDATES = 32  # headings (or disc centres) tried per step
SAMPLE_STEP = 0.5  # pixels between the points a candidate dash is checked at
ROOM_CAP = 4.0  # room beyond this many pixels no longer makes a heading likelier
BACKTRACK = 1  # dashes undone per dead end met so far
DEAD_ENDS = 20  # dead ends before a marked path is given up
DISTRACTOR_TRIES, DISTRACTOR_DEAD_ENDS = 3, 2  # distractors are best effort: give up early
IMAGE_TRIES = 50

Steps = Generator[None, None, "np.ndarray | None"]  # a path drawn one dash per step; returns its end


def check_variant(resolution: int, difficulty: str) -> None:
    if resolution not in RESOLUTIONS or difficulty not in CONTOUR_LENGTHS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS} and difficulty one of {list(CONTOUR_LENGTHS)}")


def lra_style(resolution: int, difficulty: str) -> PathStyle:
    """The generator's defaults for a resolution and difficulty (distractors as LRA: length // 3)."""
    check_variant(resolution, difficulty)
    length = CONTOUR_LENGTHS[difficulty]
    distractor_length = max(1, length // 3)
    return PathStyle(
        size=resolution,
        contour_length=length,
        distractors=DISTRACTOR_DASHES[resolution] // distractor_length,
        distractor_length=distractor_length,
        max_turn=MAX_TURN,
        **BASE_STYLES[resolution],
    )


def point_segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points (..., 2) to segments a-b (..., 2), broadcast (x and y spelled out: fast)."""
    ax, ay, dx, dy = a[..., 0], a[..., 1], b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    px, py = points[..., 0] - ax, points[..., 1] - ay
    t = np.clip((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(px - t * dx, py - t * dy)


class Canvas:
    """The capsules placed so far (dashes and reserved marker discs) and the clearance test.

    Capsule i is the segment a[i]-b[i] (a disc when a == b) inked to radius[i]; it belongs to
    path owner[i] at position[i] along it (start disc -1, end disc = the path's length).
    """

    def __init__(self, style: PathStyle) -> None:
        self.style = style
        self.a, self.b = np.zeros((0, 2)), np.zeros((0, 2))
        self.radius, self.owner, self.position = np.zeros(0), np.zeros(0, dtype=int), np.zeros(0, dtype=int)
        pitch = style.dash_length + style.dash_gap
        reach = style.spacing + style.thickness + style.marker_radius
        self.own_window = math.ceil(reach / pitch) + 1  # own recent dashes are exempt from the clearance test
        samples = max(2, math.ceil(style.dash_length / SAMPLE_STEP) + 1)
        self.along = np.linspace(0.0, 1.0, samples)[None, :, None]
        self.sample_error = style.dash_length / (2 * (samples - 1))  # farthest a dash point is from a sample

    def room(self, p: np.ndarray, q: np.ndarray, radius: float, owner: int, position: int) -> np.ndarray:
        """(C,) room of candidate capsules p[c]-q[c] (dashes from one point, or discs p == q): how far
        they stay from the frame's padding and from ``spacing`` around the capsules they must avoid,
        capped at ROOM_CAP. Negative: the candidate does not fit.

        Dashes are checked at points SAMPLE_STEP apart, less the most a sample can overstate, so
        the spacing holds exactly; capsules too far to bring any candidate below the cap are skipped.
        """
        style = self.style
        low, high = style.padding + radius, style.size - 1 - style.padding - radius
        ends = np.concatenate([p, q], axis=1)
        room = np.minimum(np.minimum(ends - low, high - ends).min(1), ROOM_CAP)
        disc = bool(np.array_equal(p, q))
        slack = 0.0 if disc else self.sample_error
        margin = radius + self.radius + style.spacing + slack
        avoid = (self.owner != owner) | (self.position < position - self.own_window)
        if not disc:  # all candidates lie within dash_length of p[0]
            reach = point_segment_distance(p[0], self.a, self.b) - style.dash_length - margin
            avoid &= reach < ROOM_CAP
        if not avoid.any():
            return room
        points = p[:, None] if disc else p[:, None] + self.along * (q - p)[:, None]
        distance = point_segment_distance(points[:, :, None], self.a[avoid], self.b[avoid]).min(1)
        return np.minimum(room, (distance - margin[avoid]).min(1))

    def add(self, p: np.ndarray, q: np.ndarray, radius: float, owner: int, position: int) -> None:
        self.a, self.b = np.vstack([self.a, p]), np.vstack([self.b, q])
        self.radius = np.append(self.radius, radius)
        self.owner, self.position = np.append(self.owner, owner), np.append(self.position, position)

    def remove(self, owner: int, first: int = -1) -> None:
        """Forget path ``owner``'s capsules from position ``first`` on (all of them by default)."""
        keep = (self.owner != owner) | (self.position < first)
        self.a, self.b, self.radius = self.a[keep], self.b[keep], self.radius[keep]
        self.owner, self.position = self.owner[keep], self.position[keep]


def pick(rng: np.random.Generator, room: np.ndarray) -> int:
    """A random candidate among those that fit (room >= 0), roomier ones likelier (fewer dead ends)."""
    weights = np.where(room >= 0, room + 0.1, 0.0) ** 2
    return int(rng.choice(len(room), p=weights / weights.sum()))


def grow_path(
    canvas: Canvas, rng: np.random.Generator, owner: int, start: np.ndarray, dashes: int, end_disc: bool,
    max_dead_ends: int = DEAD_ENDS,
) -> Steps:
    """Draw one dashed path from ``start``, one dash per step: each dash turns at most max_turn.

    At a dead end (no heading fits) the last dashes are undone, one more per dead end so far,
    and redrawn; after ``max_dead_ends`` the path's dashes are removed and it returns None.
    Otherwise it returns its end point (end of the last dash, rounded to a pixel centre); with
    ``end_disc`` the last dash must leave room for a marker disc there, which is reserved.
    """
    style = canvas.style
    pitch, turn, radius = style.dash_length + style.dash_gap, np.radians(style.max_turn), style.thickness / 2
    states: list[tuple[np.ndarray, float]] = [(start.astype(float), 0.0)]  # (point, heading) before each dash
    dead_ends = 0
    while len(states) <= dashes:
        position = len(states) - 1
        point, heading = states[-1]
        headings = heading + rng.uniform(-1, 1, CANDIDATES) * (np.pi if position == 0 else turn)
        directions = np.stack([np.sin(headings), np.cos(headings)], axis=1)
        p, q = np.broadcast_to(point, directions.shape), point + style.dash_length * directions
        room, ends = canvas.room(p, q, radius, owner, position), np.round(q)
        if end_disc and position == dashes - 1:
            room = np.minimum(room, canvas.room(ends, ends, style.marker_radius, owner, dashes))
        if not (room >= 0).any():
            dead_ends += 1
            if dead_ends > max_dead_ends:
                canvas.remove(owner, 0)
                return None
            del states[max(1, position + 1 - BACKTRACK * dead_ends) :]
            canvas.remove(owner, len(states) - 1)
            continue
        choice = pick(rng, room)
        canvas.add(p[choice], q[choice], radius, owner, position)
        states.append((point + pitch * directions[choice], headings[choice]))
        yield
    if end_disc:
        canvas.add(ends[choice], ends[choice], style.marker_radius, owner, dashes)
    return ends[choice]


def grow_together(paths: list[Steps]) -> list[np.ndarray] | None:
    """Advance the paths a dash each in turn (as LRA's generator grows its two snakes), so none
    takes all the room first; their ends, or None when one gets stuck."""
    ends: list[np.ndarray | None] = [None] * len(paths)
    while any(end is None for end in ends):
        for index, steps in enumerate(paths):
            if ends[index] is None:
                try:
                    next(steps)
                except StopIteration as stop:
                    if stop.value is None:
                        return None
                    ends[index] = stop.value
    return ends


def place_disc(canvas: Canvas, rng: np.random.Generator, owner: int, near: np.ndarray | None) -> np.ndarray | None:
    """Reserve a marker disc at a random pixel (or ``seed_distance`` from ``near``); None if none fits."""
    style = canvas.style
    if near is None:
        centres = rng.integers(0, style.size, size=(CANDIDATES, 2)).astype(float)
    else:
        angles = rng.uniform(-np.pi, np.pi, CANDIDATES)
        centres = np.round(near + style.seed_distance * np.stack([np.sin(angles), np.cos(angles)], axis=1))
    room = canvas.room(centres, centres, style.marker_radius, owner, -1)
    if not (room >= 0).any():
        return None
    centre = centres[pick(rng, room)]
    canvas.add(centre, centre, style.marker_radius, owner, -1)
    return centre


def marked_paths(canvas: Canvas, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The two marked paths, starting ``seed_distance`` apart: [(start, end)] * 2, or None."""
    first = place_disc(canvas, rng, 0, None)
    second = None if first is None else place_disc(canvas, rng, 1, first)
    if second is None:
        return None
    length = canvas.style.contour_length
    paths = [grow_path(canvas, rng, owner, start, length, True) for owner, start in enumerate([first, second])]
    ends = grow_together(paths)
    return None if ends is None else [(first, ends[0]), (second, ends[1])]


def add_distractors(canvas: Canvas, rng: np.random.Generator) -> None:
    """Short unmarked paths, as many of ``style.distractors`` as fit."""
    style = canvas.style
    radius = style.thickness / 2
    for owner in range(2, 2 + style.distractors):
        starts = rng.uniform(style.padding, style.size - 1 - style.padding, size=(CANDIDATES, 2))
        for start in starts[canvas.room(starts, starts, radius, owner, 0) >= 0][:DISTRACTOR_TRIES]:
            steps = grow_path(canvas, rng, owner, start, style.distractor_length, False, DISTRACTOR_DEAD_ENDS)
            if grow_together([steps]) is not None:
                break


def render(size: int, a: np.ndarray, b: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """(size, size) uint8: capsules a[i]-b[i] inked to radius[i] with a one-pixel linear edge
    (anti-aliasing), overlaps taking the brighter value.

    All capsules at once: each gets a square window of pixels that covers it, (N, W*W) distances.
    """
    reach = radius + 0.5
    low = np.floor(np.minimum(a, b) - reach[:, None]).astype(int)
    width = int(np.ceil((np.abs(b - a) + 2 * reach[:, None]).max())) + 2
    pixels = low[:, None] + np.stack(np.mgrid[:width, :width], axis=-1).reshape(1, -1, 2)
    ink = np.clip(reach[:, None] - point_segment_distance(pixels.astype(float), a[:, None], b[:, None]), 0.0, 1.0)
    inside = ((pixels >= 0) & (pixels < size)).all(-1)
    image = np.zeros(size * size)
    np.maximum.at(image, pixels[inside] @ np.array([size, 1]), ink[inside])
    return np.round(image * 255).astype(np.uint8).reshape(size, size)


def draw_image(style: PathStyle, label: int, rng: np.random.Generator) -> np.ndarray:
    """One Pathfinder image (size, size) uint8.

    Two marked paths start ``seed_distance`` apart (as in LRA); one start gets a marker, and
    the other marker goes on the end of the same path (label 1) or of the other path (label 0),
    so both classes show the same two paths. All four ends are kept clear either way.
    """
    for _ in range(IMAGE_TRIES):
        canvas = Canvas(style)
        paths = marked_paths(canvas, rng)
        if paths is None:
            continue
        add_distractors(canvas, rng)
        origin = int(rng.integers(2))
        markers = np.stack([paths[origin][0], paths[origin if label else 1 - origin][1]])
        dash = (canvas.a != canvas.b).any(1)  # reserved discs are not drawn, only the two markers
        return render(style.size, np.vstack([canvas.a[dash], markers]), np.vstack([canvas.b[dash], markers]),
                      np.append(canvas.radius[dash], [style.marker_radius] * 2))
    raise RuntimeError(
        f"could not fit two paths of {style.contour_length} dashes in {IMAGE_TRIES} tries: "
        "use fewer or shorter dashes, a smaller spacing or a larger max_turn"
    )


def metadata_row(folder: str, name: str, number: int, label: int, style: PathStyle) -> str:
    """A metadata row in LRA's column order: folder, file, number, label, then (as Linsley's
    generator) continuity -> max_turn, contour length, distractor length, paddle length, thickness,
    margin -> dash_gap, number of contrasts."""
    settings = [style.max_turn, style.contour_length, style.distractor_length, style.dash_length,
                style.thickness, style.dash_gap, 1]  # fmt: skip
    return " ".join(map(str, [folder, name, number, label, *settings]))


def write_folder(
    root: Path, folder_number: int, first: int, labels: Sequence[int], style: PathStyle, seed: int
) -> None:
    """imgs/<n>/sample_<i>.png and metadata/<n>.npy for images first .. first+len(labels)-1.

    Image k is drawn from its own generator (seed, k), so output does not depend on folder size
    or worker count.
    """
    folder = f"imgs/{folder_number}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for number, label in enumerate(labels):
        image = draw_image(style, int(label), np.random.default_rng([seed, first + number]))
        name = f"sample_{number}.png"
        # No fsync per image (it would dominate); os.sync() below makes the folder durable at once.
        atomic_write(root / folder / name, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"), sync=False)
        rows.append(metadata_row(folder, name, number, int(label), style))
    # The metadata lists the images, so the images are flushed to disk first and the metadata is
    # written last: a crash never leaves metadata that lists a missing or partial image.
    if hasattr(os, "sync"):  # POSIX
        os.sync()
    atomic_write_text(root / "metadata" / f"{folder_number}.npy", "\n".join(rows) + "\n")


def generate_dataset(
    out: Path, difficulty: str, count: int, seed: int, style: PathStyle, per_folder: int = 1000, workers: int = 1
) -> Path:
    """Write ``count`` images (exactly balanced labels, seeded order) to out/pathfinder<size>/<difficulty>."""
    if count < 1 or per_folder < 1:
        raise ValueError(f"count and per_folder must be positive; got {count} and {per_folder}")
    root = Path(out) / f"pathfinder{style.size}" / difficulty
    if any((root / "metadata").glob("*.npy")):
        raise FileExistsError(f"{root / 'metadata'} already holds metadata: remove it or choose another --out")
    labels = np.random.default_rng(seed).permutation(np.arange(count) % 2)
    starts = range(0, count, per_folder)
    jobs = [(root, n, start, labels[start : start + per_folder], style, seed) for n, start in enumerate(starts)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write_folder, *zip(*jobs)))
    else:
        for job in jobs:
            write_folder(*job)
    return root


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
            relative = f"{fields[0].decode()}/{fields[1].decode()}"
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
    """(resolution^2,) uint8 gray levels of a PNG, row by row."""
    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("L"))
    except UnidentifiedImageError:
        raise MalformedDataError(f"{path} is not an image file") from None
    if pixels.shape != (resolution, resolution):
        height, width = pixels.shape[:2]
        raise MalformedDataError(f"{path}: expected {resolution}x{resolution} pixels; got {width}x{height}")
    return pixels.reshape(-1)


class PathfinderImages(Dataset):
    """Images listed in the metadata, decoded on access (Path-X: 200k x 16384 pixels stay on disk).

    "x": (L,) long ids gray + 1 (mode "tokens") or (L, 1) float gray scaled to [-1, 1] (as S4).
    """

    def __init__(self, folder: Path, files: list[str], labels: np.ndarray, resolution: int, mode: str) -> None:
        self.folder = folder
        self.files = files
        self.labels = labels
        self.resolution = resolution
        self.mode = mode

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels = torch.from_numpy(read_png(self.folder / self.files[index], self.resolution))
        x = pixels.long() + 1 if self.mode == "tokens" else (pixels.float()[:, None] / 255.0 - 0.5) / 0.5
        return {"x": x, "y": int(self.labels[index]), "index": index}


def extract_lra_folder(data_dir: Path, folder: str, url: str) -> None:
    """Stream the LRA release archive and write every file below <LRA_RELEASE_ROOT>/<folder>/
    to data_dir/<folder>/ (one difficulty: about 200k small PNGs plus metadata)."""
    prefix = f"{LRA_RELEASE_ROOT}/{folder}/"
    written = 0
    for name, file in lra_archive_files(url):
        if name.startswith(prefix) and ".." not in Path(name).parts:
            atomic_write_bytes(data_dir / folder / name[len(prefix) :], file.read())
            written += 1
    if not written:
        raise DataFolderError(f"The archive {url} has no files under {prefix}.")


class PathfinderDataModule(LRAReleaseDataModule):
    """LRA Pathfinder / Path-X: binary classification of flattened grayscale images.

    Batches: x (B, L) long (mode "tokens", vocab 257) or (B, L, 1) float (mode "gray"),
    mask (B, L) all True, y (B,), index (B,), with L = resolution^2 (1024, 4096, 16384 for
    Path-X). Train/val/test: a seeded split of all listed images (LRA: 80/10/10).
    """

    folder_name = "pathfinder"

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
            task="classification",
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
            f"lra_release.gz ({base.LRA_RELEASE_URL}) there, or set download: true to stream it."
        )

    def _download(self) -> None:
        extract_lra_folder(self.data_dir, f"{self.lra_folder}/{self.difficulty}", base.LRA_RELEASE_URL)

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


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser, generate = generate_command(
        "pathfinder",
        __doc__.split("\n")[0],
        "draw Pathfinder images in the LRA release layout",
        "Write <out>/pathfinder<resolution>/<difficulty>/{imgs,metadata} like the LRA release. "
        "Knobs left unset take the resolution's and difficulty's defaults (lengths in dashes, sizes in pixels).",
    )
    generate.add_argument("--out", type=Path, required=True, help="output folder (the datamodule's data_dir)")
    generate.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=32, help="image side (128: Path-X)")
    generate.add_argument("--difficulty", choices=list(CONTOUR_LENGTHS), default="curv_contour_length_14")
    generate.add_argument("--count", type=int, default=200_000, help="images (labels exactly balanced)")
    generate.add_argument("--seed", type=int, default=0, help="random seed")
    generate.add_argument("--per-folder", type=int, default=1000, help="images per imgs/<n> folder")
    generate.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    knobs = {"contour_length": (int, "dashes per marked path"), "distractors": (int, "distractor paths"),
             "distractor_length": (int, "dashes per distractor"), "dash_length": (float, "dash length"),
             "dash_gap": (float, "gap between dashes"), "thickness": (float, "dash thickness"),
             "marker_radius": (float, "marker disc radius"), "spacing": (float, "least gap between paths"),
             "seed_distance": (float, "distance of the two marked paths' starts"),
             "max_turn": (float, "largest turn between dashes, degrees")}  # fmt: skip
    for name, (kind, text) in knobs.items():
        generate.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default: per resolution)")
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in knobs if getattr(args, name) is not None}
    style = replace(lra_style(args.resolution, args.difficulty), **overrides)
    root = generate_dataset(args.out, args.difficulty, args.count, args.seed, style, args.per_folder, args.workers)
    print(f"wrote {args.count} images to {root} ({', '.join(f'{k}={v}' for k, v in asdict(style).items())})")


if __name__ == "__main__":
    main()
