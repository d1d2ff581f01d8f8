"""LRA ListOps expressions: an evaluator, LRA's generator, and the `generate` command line.

Source strings look like the LRA release files, e.g. ``( ( ( [MAX 2 ) 9 ) ] )`` for
[MAX 2 9 ] (= 9). The datamodule that reads them is datamodules.listops, whose
``python -m datamodules.listops generate`` runs `main` here; this module imports neither torch
nor Lightning, so the command's --help and argument errors answer at once.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from pathlib import Path

from datamodules.commands import generate_command
from esssm.files import atomic_write_text

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
CLOSE = "]"
PARENS = frozenset({"(", ")"})
DIGITS = tuple(str(value) for value in range(10))
HEADER = ["Source", "Target"]
VALUE_PROBABILITY = 0.25  # LRA's VALUE_P: a node below max depth is an operator with this probability
LRA_TRAIN_EXAMPLES = 96_000  # LRA ListOps


# ----------------------------------------------------------------------------- evaluator


def apply_operator(operator: str, args: Sequence[int]) -> int:
    """One ListOps operation. MED of an even count is int(mean of the two middle values), as
    LRA's ``int(np.median(...))``; SM is the sum modulo 10."""
    if operator == MIN:
        return min(args)
    if operator == MAX:
        return max(args)
    if operator == SUM_MOD:
        return sum(args) % 10
    ordered = sorted(args)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2


def evaluate(source: str) -> int:
    """The value of a ListOps expression string (with or without LRA's parentheses).

    Raises ValueError for an unknown token, an unbalanced "]", an operator with no
    arguments, or anything but exactly one top-level expression.
    """
    open_operators: list[tuple[str, list[int]]] = []
    results: list[int] = []
    for token in source.split():
        if token in PARENS:
            continue
        if token in OPERATORS:
            open_operators.append((token, []))
            continue
        if token == CLOSE:
            if not open_operators:
                raise ValueError(f"unmatched {CLOSE!r} in ListOps expression")
            operator, args = open_operators.pop()
            if not args:
                raise ValueError(f"{operator} has no arguments")
            value = apply_operator(operator, args)
        elif token in DIGITS:
            value = int(token)
        else:
            raise ValueError(f"unknown ListOps token {token!r}")
        (open_operators[-1][1] if open_operators else results).append(value)
    if open_operators or len(results) != 1:
        raise ValueError(
            f"expected one complete ListOps expression, got {len(results)} and {len(open_operators)} unclosed"
        )
    return results[0]


# ----------------------------------------------------------------------------- generator


Tree = int | tuple[str, list["Tree"]]  # a digit, or (operator, arguments)


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> tuple[Tree, int]:
    """One random expression as LRA's generator draws it: (tree, length).

    Same random draws in the same order as LRA's ``generate_tree`` (value-or-operator,
    argument count, arguments, then the operator). The length counts operators, digits
    and "]", i.e. the tokens left after dropping parentheses.
    """
    if depth >= max_depth or rng.random() > VALUE_PROBABILITY:
        return rng.choice(range(10)), 1
    num_args = rng.randint(2, max_args)
    args = [generate_tree(rng, depth + 1, max_depth, max_args) for _ in range(num_args)]
    return (rng.choice(OPERATORS), [arg for arg, _ in args]), 2 + sum(length for _, length in args)


def to_source(tree: Tree) -> str:
    """The Source string LRA writes for a tree.

    LRA nests an operator's arguments as left-nested pairs and prints each pair in
    parentheses: n+1 "(" before the operator, a ")" after each argument and after "]".
    """
    tokens: list[str] = []

    def write(node: Tree) -> None:
        if isinstance(node, int):
            tokens.append(DIGITS[node])
            return
        operator, args = node
        tokens.extend(["("] * (len(args) + 1))
        tokens.append(operator)
        for arg in args:
            write(arg)
            tokens.append(")")
        tokens.extend([CLOSE, ")"])

    write(tree)
    return " ".join(tokens)


def generate_examples(
    count: int, min_len: int, max_len: int, max_depth: int = 10, max_args: int = 10, seed: int = 0
) -> list[tuple[str, int]]:
    """``count`` distinct (source, label) pairs with min_len < length < max_len (LRA's strict window).

    Raises ValueError when the window admits too few distinct expressions (no new one in
    100k draws).
    """
    if max_args < 2:
        raise ValueError(f"max_args must be at least 2 (an operator has 2..max_args arguments): {max_args}")
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[tuple[str, int]] = []
    draws_since_new = 0
    while len(examples) < count:
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        draws_since_new += 1
        source = to_source(tree) if min_len < length < max_len else ""
        if source and source not in seen:
            seen.add(source)
            examples.append((source, evaluate(source)))
            draws_since_new = 0
        elif draws_since_new >= 100_000:
            raise ValueError(
                f"no new expression with {min_len} < length < {max_len} in 100000 draws "
                f"(max_depth={max_depth}, max_args={max_args}); widen the length window"
            )
    return examples


def write_tsv(path: Path, examples: Sequence[tuple[str, int]]) -> None:
    """Write examples (atomically) in the LRA release format: header "Source\\tTarget", one row each."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(examples)
    atomic_write_text(path, buffer.getvalue())


def check_generate_target(out: Path, sizes: dict[str, int], overwrite: bool = False) -> None:
    """Refuse, before generating: non-positive split sizes, an --out that is a file, and split
    files already there (unless `overwrite`), so no earlier data set is silently replaced."""
    bad = {split: size for split, size in sizes.items() if size < 1}
    if bad:
        raise ValueError(f"split sizes must be positive; got {bad}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder for basic_{{train,val,test}}.tsv")
    existing = [name for name in (f"basic_{split}.tsv" for split in sizes) if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}: choose another --out, or pass --overwrite to replace them"
        )


def generate_dataset(
    out: Path, sizes: dict[str, int], min_len: int, max_len: int, max_depth: int, max_args: int, seed: int,
    overwrite: bool = False,
) -> None:
    """Write basic_{train,val,test}.tsv into ``out``; splits are disjoint, as in LRA. Refuses
    existing split files unless `overwrite` (see check_generate_target)."""
    check_generate_target(out, sizes, overwrite)
    examples = generate_examples(sum(sizes.values()), min_len, max_len, max_depth, max_args, seed)
    start = 0
    for split, size in sizes.items():
        write_tsv(out / f"basic_{split}.tsv", examples[start : start + size])
        start += size


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser, generate = generate_command(
        "listops",
        __doc__.split("\n")[0],
        "write basic_{train,val,test}.tsv with the LRA ListOps generator",
        "Write basic_{train,val,test}.tsv like the LRA release (defaults: LRA's settings). "
        "Kept expressions have min-len < length < max-len tokens (parentheses not counted), as in LRA.",
    )
    generate.add_argument("--out", type=Path, required=True, help="output folder")
    generate.add_argument("--train", type=int, default=LRA_TRAIN_EXAMPLES, help="training examples")
    generate.add_argument("--val", type=int, default=2_000, help="validation examples")
    generate.add_argument("--test", type=int, default=2_000, help="test examples")
    generate.add_argument("--min-len", type=int, default=500, help="lengths must exceed this")
    generate.add_argument("--max-len", type=int, default=2000, help="lengths must stay below this")
    generate.add_argument("--max-depth", type=int, default=10, help="maximum tree depth")
    generate.add_argument("--max-args", type=int, default=10, help="maximum arguments per operator")
    generate.add_argument("--seed", type=int, default=0, help="random seed")
    generate.add_argument("--overwrite", action="store_true", help="replace split files already in --out")
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    try:
        check_generate_target(args.out, sizes, args.overwrite)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    generate_dataset(
        args.out, sizes, args.min_len, args.max_len, args.max_depth, args.max_args, args.seed, args.overwrite
    )
    print(f"wrote {', '.join(f'{size} {split}' for split, size in sizes.items())} examples to {args.out}")
