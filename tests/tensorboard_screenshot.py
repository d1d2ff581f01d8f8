"""Screenshot of TensorBoard's CUSTOM SCALARS tab: the test budget curves of every run on one
chart against k, then validation accuracy and loss with a line per k.

    PYTHONPATH=.:tests .venv/bin/python tests/tensorboard_screenshot.py /tmp/tb docs/tensorboard_budget_curves.png
    PYTHONPATH=.:tests .venv/bin/python tests/tensorboard_screenshot.py OUT/runs/listops docs/tensorboard_budget_curves.png --existing

Trains the three tiny runs of tests/test_tensorboard.py into the folder (or, with --existing,
serves the runs already there, e.g. those of `./reproduce.sh --quick`) with TensorBoard on a free
local port, and has headless Chromium (`chromium` on PATH) load the CUSTOM SCALARS page with
smoothing 0 and save a PNG.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from test_tensorboard import tensorboard, train_runs

from esssm.files import atomic_write_bytes


# TensorBoard reads the smoothing from the page's URL: no smoothing along k.
PAGE = "?darkMode=false#custom_scalars&_smoothingWeight=0"


def main(folder: str, png: str, existing: bool = False) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Chromium on PATH (e.g. apt-get install -y chromium)")
    logdir = Path(folder) if existing else next(iter(train_runs(Path(folder)).values())).parents[1]
    with tensorboard(logdir) as url, tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        page = f"{url}/{PAGE}"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,900", "--virtual-time-budget=20000", f"--screenshot={shot}", page],
                       check=True, capture_output=True, timeout=180)
        atomic_write_bytes(png, shot.read_bytes())
    print(f"wrote {png} from {page}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--existing" in sys.argv[3:])
