"""The command line of `./reproduce.sh` (the runs themselves: esssm/lab/reproduce.py).

It imports neither torch nor Lightning: `./reproduce.sh --help` and argument errors answer at
once, and reproduce (with torch and Lightning) is imported only for a command line that parses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esssm.lab.commands import budget_list, positive_int
from esssm.lab.quiet import quiet_banners

REPO = Path(__file__).resolve().parents[2]
TASKS = ("listops", "text", "retrieval", "scifar", "pathfinder", "speech")
# The quick profile's ListOps: the LRA generator at short lengths (no download).
# conf/make_configs.py reads its length and folder (under the output folder) for the quick configs.
QUICK_LISTOPS = {"train": 4000, "val": 500, "test": 500, "min_len": 20, "max_len": 256, "folder": "data/listops-quick"}
LAUNCHERS = ("inprocess", "local", "slurm")
DEFAULT_MINUTES = 24 * 60  # --time
DESCRIPTION = ("train every (task, model, seed) run, sweep its budgets on the test split, and write the paper's "
               "tables (mean ± std over seeds, markdown + CSV) and budget-curve PNGs")


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of esssm/lab/launch.py, which checks them (`check_arguments`) and runs the jobs."""
    group = parser.add_argument_group("launcher", "where each run's `esssm fit` runs (submitit; see README)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                       help="inprocess (default): fit processes started here; local: submitit jobs on this "
                            "machine; slurm: one SLURM job per run, submitted as a job array")
    group.add_argument("--status", action="store_true",
                       help="print each run's state (done, pending, running, failed with its logs) and exit")
    group.add_argument("--collect", action="store_true",
                       help="train nothing: evaluate the finished runs, write the tables, name the missing runs")
    group.add_argument("--time", type=positive_int,
                       help=f"minutes per job (local and slurm; default {DEFAULT_MINUTES}); at SLURM's limit a run "
                            "saves and is requeued")
    group.add_argument("--slurm-partition", help="slurm: partition (sbatch --partition)")
    group.add_argument("--slurm-account", help="slurm: account to charge (sbatch --account)")
    group.add_argument("--slurm-qos", help="slurm: quality of service (sbatch --qos)")
    group.add_argument("--gpus-per-run", type=positive_int,
                       help="slurm: GPUs per run on one node, one task each; they are the run's "
                            "--trainer.devices (default: --devices)")
    group.add_argument("--cpus-per-run", type=positive_int, help="slurm: CPU cores per run, split over its tasks")
    group.add_argument("--mem", type=positive_int, help="slurm: GB of memory per run (sbatch --mem)")
    group.add_argument("--max-running", type=positive_int,
                       help="slurm: runs of the array running at once (the array's %%N; default 256)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./reproduce.sh", description=DESCRIPTION)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="generated ListOps, small models, minutes on a CPU (default); "
                           "--tasks listops,lm adds a byte-level LM on the Python stdlib")
    mode.add_argument("--full", dest="profile", action="store_const", const="full",
                      help="the paper's five tasks at ~20M parameters (GPUs and the data sets)")
    parser.add_argument("--tasks", help="comma-separated task folders of the profile's configs (quick: listops, lm; "
                        f"full: {','.join(TASKS)},lm)")
    parser.add_argument("--models", help="comma-separated config names under conf/<task>/ (e.g. esssm,fixed)")
    parser.add_argument("--devices", type=int, default=1, help="devices per run (DDP when > 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at once (default: 1 with a GPU; on a CPU all pending runs, "
                             "up to 2 per core, splitting the cores between them)")
    parser.add_argument("--out", type=Path, default=REPO, help="folder for runs/, results/ and data/")
    parser.add_argument("--data-size", type=int, default=QUICK_LISTOPS["train"],
                        help="training examples of the quick profile's generated ListOps")
    parser.add_argument("--budgets", type=budget_list, default=None,
                        help="test budgets: 'all' (quick's default), 'paper' (full's default: the paper's grid "
                             "plus 1 and k_max) or a comma list such as 1,2,4,8 (k_max is always added)")
    parser.add_argument("--smoke", action="store_true",
                        help="instead of training: every config of the profile at its real length and width "
                             "for 2 steps on generated data, then results/smoke.md (see esssm/lab/smoke.py)")
    parser.add_argument("--smoke-batch", type=int, default=2,
                        help="batch of --smoke on a CPU (GPU: each config's own); step times are scaled")
    parser.add_argument("--smoke-budgets", choices=("all", "paper"), default="all",
                        help="budgets --smoke checks on the validation batch: every k, or the paper's grid")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds: each (task, model) trains once per seed (model init, data "
                             "order, budget sequence); tables give mean ± std over them")
    parser.add_argument("--progress-every", type=float, default=30.0,
                        help="seconds between progress lines when stdout is not a terminal (CI, nohup)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: extra `esssm fit` arguments for every run, e.g. -- --trainer.max_epochs=1")
    add_launcher_arguments(parser)
    parser.set_defaults(profile="quick")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, then run it (esssm/lab/reproduce.py: torch and Lightning load here)."""
    argv = sys.argv[1:] if argv is None else argv
    quiet_banners()
    args = parse_args(argv)
    from esssm.lab import reproduce

    return reproduce.run(args, "./reproduce.sh " + " ".join(argv))


if __name__ == "__main__":
    sys.exit(main())
