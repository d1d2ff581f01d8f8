"""The package layers: imports point only down (maths <- train, infer <- lab), and the maths
loads neither Lightning nor the datamodules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each layer may import from the project and from Lightning.
LAYERS = {
    "maths": {"esssm"},
    "infer": {"esssm", "esssm.infer"},
    "train": {"esssm", "esssm.train", "lightning"},
    "lab": {"esssm", "esssm.train", "esssm.infer", "esssm.lab", "lightning", "datamodules", "baselines"},
    "datamodules": {"esssm", "datamodules", "lightning"},
    "baselines": {"esssm", "baselines"},
}
PROJECT = ("esssm", "datamodules", "baselines", "lightning")


def layer_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if parts[0] in ("datamodules", "baselines"):
        return parts[0]
    return parts[1] if parts[1] in ("train", "infer", "lab") else "maths"


def group(module: str) -> str | None:
    """The layer group an imported module belongs to ("esssm" for the maths), or None."""
    top = module.split(".")[0]
    if top not in PROJECT:
        return None
    if top == "esssm":
        parts = module.split(".")
        return f"esssm.{parts[1]}" if len(parts) > 1 and parts[1] in ("train", "infer", "lab") else "esssm"
    return top


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name if group(name) != group(node.module) else node.module) for name in names]
    return found


SOURCES = sorted(
    p for folder in ("esssm", "datamodules", "baselines") for p in (ROOT / folder).rglob("*.py")
    if p.name != "__main__.py"
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_only_down(path: Path) -> None:
    allowed = LAYERS[layer_of(path)]
    wrong = [f"line {line}: {name}" for line, name in imports(path) if group(name) not in (None, *allowed)]
    assert not wrong, f"{path.relative_to(ROOT)} ({layer_of(path)}) imports above its layer: {wrong}"


def test_the_maths_loads_neither_lightning_nor_datamodules() -> None:
    code = (
        "import sys, esssm, esssm.spectral, esssm.layer, esssm.model, esssm.budget, esssm.batch, esssm.ops, "
        "esssm.infer, baselines; "
        "model = esssm.ESSSM(d_model=8, n_layers=1, seq_len=16, k_max=4); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'datamodules'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
