"""The Pathfinder image generator: LRA-like images drawn with this project's own code (not the
original generator's pixels), written in the LRA release layout that datamodules.pathfinder reads.

Each image shows two marker dots and dashed curved paths built from short dashes, plus
distractors; the label is 1 when the dots lie on the two ends of the same path. A spacing
between paths keeps the label readable from the pixels (see PathStyle). `main` is the command
line `python -m datamodules.pathfinder generate`; this module imports neither torch nor Lightning,
so its --help and argument errors answer at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from datamodules.commands import generate_command
from esssm.files import atomic_write, atomic_write_text

RESOLUTIONS = (32, 64, 128)
CONTOUR_LENGTHS = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
Difficulty = Literal["curv_baseline", "curv_contour_length_9", "curv_contour_length_14"]


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


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser, generate = generate_command(
        "pathfinder",
        "LRA Pathfinder and Path-X: LRA-like images in the LRA release layout",
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
