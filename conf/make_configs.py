"""Write conf/<task>/<model>.yaml and conf/quick/<task>/<model>.yaml from one table.

    python conf/make_configs.py           # (re)write every config
    python conf/make_configs.py --check   # exit 1, with diffs, if conf/ differs from this table

One source for every config: the task recipe (data, epochs, batch) and the model (backbone).
Baselines get the width whose whole-model parameter count is closest to the task's ES-SSM
(within 10%, asserted by tests/test_configs.py), so the comparison is at matched size.
Edit this file, not the YAML it writes.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import inspect
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write (or --check) every YAML config from this file's tables.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; print each file that differs from the generator and exit 1 if any does")
    parser.add_argument("--conf-dir", type=Path, default=ROOT,
                        help="the folder that holds the task folders (default: this file's folder)")
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help and bad options answer before the imports below load torch

from baselines.sizing import match_width  # noqa: E402
from esssm.budget import PAPER_EVAL_BUDGETS, BudgetSampler  # noqa: E402
from esssm.files import atomic_write_text  # noqa: E402
from esssm.lab.reproduce import QUICK_LISTOPS  # noqa: E402
from esssm.model import build_module, count_parameters  # noqa: E402
from esssm.objectives import objective_model  # noqa: E402
from esssm.train.callbacks import VAL_SWEEP_EVERY_N_EPOCHS  # noqa: E402
from esssm.train.lit import SequenceModule  # noqa: E402

# Every truncation level is swept: at test always, at validation every 10 epochs (a sweep of all
# k costs about one training epoch at the sCIFAR size; docs/design.md) and at the last epoch.
# "paper" selects the paper's evaluation grid instead of "all".
SWEEP = {"val_budgets": "all", "test_budgets": "all", "every_n_epochs": VAL_SWEEP_EVERY_N_EPOCHS}
# Authors' recipe (docs/design.md section 1): AdamW lr 2e-4, betas (0.9, 0.95), wd 0.03, warm-up
# 6% then cosine to 0.1x, clip 1.0, EMA 0.999, budget dropout (2 warm-up epochs, every 8th step
# full, the paper's grid 2..32). Its values live in the defaults of SequenceModule (optimiser, EMA)
# and BudgetSampler (budget dropout), which the configs state explicitly. The same optimiser
# recipe is used for every model of a task so the comparison is fair.
TASK_DEFAULTS = {name: p.default for name, p in inspect.signature(SequenceModule).parameters.items()}
FULL_EVERY = inspect.signature(BudgetSampler).parameters["full_every"].default
FULL_RECIPE = {"lr": TASK_DEFAULTS["lr"], "ema_decay": TASK_DEFAULTS["ema_decay"], "budget": {"warmup_epochs": 2},
               "sweep": SWEEP}
# The authors' byte LM counts its warm-up in updates: 2 "epochs" of 4000 updates = 8,000 optimizer
# steps at full budget, then budget dropout; it validates at their budgets {32, 24, ..., 2}.
LM_RECIPE = {**FULL_RECIPE, "budget": {"warmup_steps": 8000},
             "sweep": {**SWEEP, "val_budgets": sorted(PAPER_EVAL_BUDGETS)}}
# The quick profile trains for minutes: a larger step, a shorter EMA, one warm-up epoch, and
# budget 1 in the grid because the quick tables report every k from 1. reproduce.sh's test sweep
# covers every k; validation sweeps every k halfway and at the last epoch (quick_recipe), so each
# per-k chart of TensorBoard has a line, not a single column of dots.
QUICK_RECIPE = {"lr": 2e-3, "ema_decay": 0.99,
                "budget": {"warmup_epochs": 1, "grid": [1, 2, 3, 4, 6, 8, 12, 16], "k_min": 1}}

FULL_SIZE_K_MAX = 32
FULL_SIZE = {"d_model": 256, "n_layers": 8, "k_max": FULL_SIZE_K_MAX}


def quick_recipe(epochs: int) -> dict:
    """QUICK_RECIPE with a validation sweep of every k at epoch epochs // 2 and at the last one."""
    return {**QUICK_RECIPE, "sweep": {**SWEEP, "every_n_epochs": max(1, epochs // 2)}}


# Each task states its sequence length once, `seq_len`: the backbone's, and the datamodule's
# `length_arg` where its length is a setting (the other data sets have one length).
TASKS = {
    "listops": {"data": "datamodules.ListOpsDataModule", "length_arg": "max_len", "seq_len": 2000,
                "batch": 32, "epochs": 40},
    "text": {"data": "datamodules.IMDBDataModule", "length_arg": "max_len", "seq_len": 4096,
             "batch": 16, "epochs": 32},
    # Retrieval and Speech keep 16 examples per update, in micro-batches: 16 at once is 128k or
    # 256k tokens per step, and float32 training at 65k tokens already takes 26 GB (ES-SSM) to
    # 52 GB (Mamba-2) on an H100 (docs/benchmarks.md), so one 80 GB GPU would not hold it.
    "retrieval": {"data": "datamodules.AANDataModule", "length_arg": "max_len", "seq_len": 4000,
                  "batch": 8, "trainer": {"accumulate_grad_batches": 2}, "epochs": 20},
    "scifar": {"data": "datamodules.SCIFARDataModule", "args": {"mode": "gray"}, "seq_len": 1024,
               "batch": 50, "epochs": 200},
    # LRA Pathfinder (32 x 32, hardest difficulty) with S4's recipe size: batch 64, 200 epochs.
    "pathfinder": {"data": "datamodules.PathfinderDataModule",
                   "args": {"resolution": 32, "difficulty": "curv_contour_length_14", "mode": "gray"},
                   "seq_len": 1024, "batch": 64, "epochs": 200},
    "speech": {"data": "datamodules.SpeechCommandsDataModule", "args": {"subset": "sc35"},
               "seq_len": 16000, "batch": 2, "trainer": {"accumulate_grad_batches": 8}, "epochs": 40},
    # LRA Path-X (128 x 128, L = 16384) with S4's recipe size: 16 images per update, 50 epochs, in
    # micro-batches of 2 (32k tokens) like Speech Commands' L = 16000.
    "pathx": {"data": "datamodules.PathfinderDataModule",
              "args": {"resolution": 128, "difficulty": "curv_contour_length_14", "mode": "gray"},
              "seq_len": 16384, "batch": 2, "trainer": {"accumulate_grad_batches": 8}, "epochs": 50},
}
# Byte-level LM (the authors' PG19 setting), scored in bits per byte: the spectral models and a
# causal Transformer of matched size as the reference row. One pass over PG19's books at the
# authors' shape: L = 4096, 4 sequences x 4 accumulation = 65,536 tokens per optimizer step,
# validation every 4000 updates (16,000 micro-batches, the authors' "epoch").
# Its early_stopping setting (off) and checkpoint watch bits per byte at K_max; TF32 matmuls on, as
# the authors'.
LM_MONITOR = {"monitor": "val/bpb", "mode": "min"}
LM = {"data": "datamodules.ByteLMDataModule", "args": {"hf_dataset": "deepmind/pg19"}, "length_arg": "seq_len",
      "seq_len": 4096, "batch": 4, "epochs": 1, "recipe": LM_RECIPE,
      "trainer": {"accumulate_grad_batches": 4, "val_check_interval": 16000},
      "checkpoint": LM_MONITOR, "early_stopping": LM_MONITOR, "matmul_precision": "high"}
# The authors' whole LM recipe (conf/lm/*_authors.yaml; docs/fidelity.md): 300 "epochs" x 4,000 =
# 1.2M optimizer steps (warm-up 6% = 72,000, cosine to 0.1x at 1.2M), early stopping after 10
# validations without a 1e-4 gain in bits per byte at K_max, validation on 25 batches of 1,024
# segments cached per split from a shuffled book stream, the budget curve every 12,000 steps
# and the test at K_max only (on the best checkpoint's EMA weights: `lightning test --ckpt_path`).
LM_AUTHORS = {**LM, "args": {**LM["args"], "eval_segments": 1024},
              "trainer": {**LM["trainer"], "max_epochs": -1, "max_steps": 1_200_000, "limit_val_batches": 25},
              "recipe": {**LM_RECIPE, "sweep": {**LM_RECIPE["sweep"], "test_budgets": [FULL_SIZE_K_MAX],
                                                 "every_n_epochs": None, "every_n_steps": 12_000}},
              "early_stopping": {"enabled": True, **LM_MONITOR, "patience": 10, "min_delta": 1e-4}}
AUTHORS_MODELS = ("esssm", "esssm_sum", "fixed")  # ES-SSM and its fixed-budget and plain-sum siblings
# The quick profile: generated short ListOps (esssm.lab.reproduce generates it) and the Python stdlib as
# LM text; minutes on 2 CPU cores.
QUICK = {"data": "datamodules.ListOpsDataModule", "args": {"data_dir": QUICK_LISTOPS["folder"]},
         "length_arg": "max_len", "seq_len": QUICK_LISTOPS["max_len"], "batch": 32, "epochs": 8,
         "recipe": quick_recipe(8)}
QUICK_LM = {"data": "datamodules.ByteLMDataModule",
            "args": {"python_stdlib": True, "max_bytes": 1_000_000}, "length_arg": "seq_len",
            "seq_len": 256, "batch": 16, "epochs": 2, "recipe": quick_recipe(2),
            "checkpoint": LM_MONITOR, "early_stopping": LM_MONITOR}

QUICK_SIZE = {"d_model": 64, "n_layers": 2, "k_max": 16}


def spectral_models(size: dict, seq_len: int) -> dict[str, tuple[dict, dict]]:
    """ES-SSM, its ablations and the fixed-budget SSM: name -> (backbone spec, model overrides)."""
    base = {"d_model": size["d_model"], "n_layers": size["n_layers"], "seq_len": seq_len, "k_max": size["k_max"]}
    esssm = lambda **layer: {"class_path": "esssm.model.ESSSM",  # noqa: E731
                             "init_args": {**base, **({"layer": layer} if layer else {})}}
    return {
        "esssm": (esssm(), {}),
        # The elastic plain sum: unit channel weights (no gate, no normalisation), budget dropout.
        "esssm_sum": (esssm(gate=False, normalize=False), {}),
        "esssm_nogate": (esssm(gate=False), {}),
        "esssm_norms": (esssm(rms_rescale=False), {}),
        "esssm_nodropout": (esssm(), {"budget": None}),
        "fixed": ({"class_path": "baselines.FixedSpectralSSM", "init_args": base}, {"budget": None}),
    }


def baseline_builders(n_layers: int, seq_len: int, causal: bool = False) -> dict[str, tuple[str, dict, int]]:
    """name -> (class path, fixed init args, width multiple); the width is matched. `causal`
    gives the Transformer its decoder mask, for the byte LM."""
    attention = {"n_layers": n_layers, "n_heads": 8, "max_len": seq_len, **({"causal": True} if causal else {})}
    return {
        "transformer": ("baselines.Transformer", attention, 8),
        "mamba": ("baselines.Mamba", {"n_layers": n_layers}, 8),
        "mamba2": ("baselines.Mamba2", {"n_layers": n_layers, "headdim": 32}, 16),
        "s4d": ("baselines.S4D", {"n_layers": n_layers}, 8),
        "arstu": ("baselines.ARSTU", {"n_layers": n_layers, "seq_len": seq_len, "num_filters": 24}, 8),
    }


def whole_model_params(backbone: dict, data: dict) -> int:
    """Parameters of the task's whole model (its head included: Retrieval's MLP grows with width)."""
    return count_parameters(objective_model(backbone=build_module(backbone), **data))


def matched(class_path: str, args: dict, multiple: int, target: int, data: dict) -> dict:
    spec = lambda d: {"class_path": class_path, "init_args": {"d_model": d, **args}}  # noqa: E731
    width = match_width(lambda d: objective_model(backbone=build_module(spec(d)), **data), target, multiple)
    return spec(width)


def config(task: dict, run_name: str, backbone: dict, overrides: dict) -> dict:
    recipe = task.get("recipe", FULL_RECIPE)
    budget = {"budget": {**recipe["budget"], "full_every": FULL_EVERY}}  # esssm.budget.BudgetSampler's arguments
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "auto",
            "max_epochs": task["epochs"],
            "gradient_clip_val": 1.0,
            "log_every_n_steps": 10,
            **task.get("trainer", {}),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": run_name, "default_hp_metric": False},
            },
        },
        "model": {
            "backbone": backbone,
            "lr": recipe["lr"],
            "weight_decay": TASK_DEFAULTS["weight_decay"],
            "warmup_ratio": TASK_DEFAULTS["warmup_ratio"],
            "ema_decay": recipe["ema_decay"],
            **(budget if "k_max" in backbone["init_args"] else {}),  # baselines have no budget
            **overrides,
        },
        "data": {"class_path": task["data"], "init_args": {**data_args(task), "batch_size": task["batch"]}},
        "sweep": recipe["sweep"],
        # copies: a setting shared by two keys would be written as a YAML anchor and alias
        **{key: copy.copy(task[key]) for key in ("checkpoint", "early_stopping", "matmul_precision") if key in task},
    }


def data_args(task: dict) -> dict:
    """The datamodule's arguments of a task: its own, and its sequence length where that is one."""
    length = {task["length_arg"]: task["seq_len"]} if "length_arg" in task else {}
    return {**task.get("args", {}), **length}


def data_facts(task: dict) -> dict:
    """objective_model's objective, num_classes, vocab_size and input_dim, from the datamodule (no data needed)."""
    from esssm.lab.loading import instantiate_datamodule

    dm = instantiate_datamodule({"class_path": task["data"], "init_args": data_args(task)})
    return {"objective": dm.objective, "num_classes": dm.num_classes, "vocab_size": dm.vocab_size,
            "input_dim": dm.input_dim}


def yaml_text(cfg: dict, header: str) -> str:
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=100)
    return f"# {header}\n# Generated by conf/make_configs.py: edit there, then rerun it.\n{body}"


def render_task(
    run_name: str, task: dict, size: dict, models: tuple[str, ...], baselines: tuple[str, ...], suffix: str = ""
) -> dict[str, str]:
    """YAML text of each of the task's models, keyed "<run_name>/<model><suffix>.yaml" (its path under conf/)."""
    data = data_facts(task)
    specs = {k: v for k, v in spectral_models(size, task["seq_len"]).items() if k in models}
    target = whole_model_params(specs["esssm"][0], data)
    causal = task["data"] == LM["data"]
    for name, (class_path, args, multiple) in baseline_builders(size["n_layers"], task["seq_len"], causal).items():
        if name in baselines:
            specs[name] = (matched(class_path, args, multiple, target, data), {})
    files = {}
    for name, (backbone, overrides) in specs.items():
        params = whole_model_params(backbone, data)
        name += suffix
        header = f"{run_name} / {name}: {params / 1e6:.2f}M parameters (ES-SSM: {target / 1e6:.2f}M)"
        files[f"{run_name}/{name}.yaml"] = yaml_text(config(task, f"{run_name}/{name}", backbone, overrides), header)
    return files


def render() -> dict[str, str]:
    """Every config's YAML text, keyed by its path under conf/ (e.g. "quick/lm/esssm.yaml").
    Builds each model on the CPU to count its parameters (about a minute; no data, no training)."""
    every = tuple(baseline_builders(1, 1))
    spectral = tuple(spectral_models(FULL_SIZE, 1))
    files = {}
    for name, task in TASKS.items():
        files |= render_task(name, task, FULL_SIZE, spectral, every)
    files |= render_task("lm", LM, FULL_SIZE, spectral, ("transformer",))
    files |= render_task("lm", LM_AUTHORS, FULL_SIZE, AUTHORS_MODELS, (), suffix="_authors")
    files |= render_task("quick/listops", QUICK, QUICK_SIZE, spectral, ("transformer",))
    files |= render_task("quick/lm", QUICK_LM, QUICK_SIZE, spectral, ("transformer",))
    return files


def write(conf_dir: Path, files: dict[str, str]) -> None:
    """Write each rendered file under `conf_dir`, atomically (a failed run leaves the old file)."""
    for name, text in files.items():
        atomic_write_text(conf_dir / name, text)
        print(f"wrote {conf_dir / name}")


def differences(conf_dir: Path, files: dict[str, str], max_lines: int = 20) -> list[str]:
    """One report per YAML file under `conf_dir` that is missing, extra, or differs from `files`
    (a unified diff, cut to `max_lines` lines)."""
    on_disk = {path.relative_to(conf_dir).as_posix(): path for path in conf_dir.rglob("*.yaml")}
    reports = []
    for name in sorted(files.keys() | on_disk.keys()):
        if name not in on_disk:
            reports.append(f"missing: {conf_dir / name} (the generator writes it)")
        elif name not in files:
            reports.append(f"extra: {on_disk[name]} is not written by the generator: delete it, or add it there")
        elif (text := on_disk[name].read_text()) != files[name]:
            diff = list(difflib.unified_diff(text.splitlines(), files[name].splitlines(), lineterm="", n=1,
                                             fromfile=f"{on_disk[name]} (on disk)", tofile=f"{name} (generated)"))
            cut = [f"... ({len(diff) - max_lines} more diff lines)"] if len(diff) > max_lines else []
            reports.append("\n".join(["differs: " + str(on_disk[name]), *diff[:max_lines], *cut]))
    return reports


def check(conf_dir: Path, files: dict[str, str]) -> int:
    """Print each difference between `conf_dir` and `files`; the exit status, 1 if there is any."""
    reports = differences(conf_dir, files)
    for report in reports:
        print(report)
    if reports:
        print(f"{len(reports)} config file(s) in {conf_dir} differ from conf/make_configs.py: edit the "
              "generator, not the YAML, then run `python conf/make_configs.py` to rewrite them")
        return 1
    print(f"all {len(files)} configs in {conf_dir} match conf/make_configs.py")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.check and not args.conf_dir.is_dir():
        parser.error(f"--conf-dir {args.conf_dir} is not a folder: give the folder that holds the task folders")
    files = render()
    if args.check:
        return check(args.conf_dir, files)
    write(args.conf_dir, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
