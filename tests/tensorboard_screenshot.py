"""Screenshot of TensorBoard overlaying the test budget curves of ES-SSM and the fixed-budget SSM.

    PYTHONPATH=.:tests .venv/bin/python tests/tensorboard_screenshot.py /tmp/tb docs/tensorboard_budget_curves.png

Trains the two tiny runs of tests/test_tensorboard.py into the folder, serves them with
TensorBoard on a free local port and has headless Chromium (`chromium` on PATH) load the CUSTOM
SCALARS page (the layout BudgetSweep writes: validation accuracy and loss with a line per k, and
the test sweep against k with both runs on one chart) and save a PNG.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from test_tensorboard import tensorboard, train_runs

from esssm.files import atomic_write_bytes


def main(folder: str, png: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Chromium on PATH (e.g. apt-get install -y chromium)")
    runs = train_runs(Path(folder))
    with tensorboard(next(iter(runs.values())).parents[1]) as url, tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        page = f"{url}/?darkMode=false#custom_scalars"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,760", "--virtual-time-budget=20000", f"--screenshot={shot}", page],
                       check=True, capture_output=True, timeout=180)
        atomic_write_bytes(png, shot.read_bytes())
    print(f"wrote {png} from {page}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
