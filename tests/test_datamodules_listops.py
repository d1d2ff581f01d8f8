"""ListOps: evaluator on hand-worked expressions, the LRA-style generator, the tsv reader and datamodule."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules import DataFolderError, ListOpsDataModule
from datamodules.base import SPLITS
from datamodules.listops import VOCAB
from datamodules.listops_generator import evaluate, generate_examples, main, to_source

# Rows as in the LRA release files (LRA's parentheses included); values worked by hand.
ROWS = [
    ("( ( ( [MAX 2 ) 9 ) ] )", 9),
    ("( ( ( [SM ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )", 4),
    ("( ( ( ( [MED 2 ) 9 ) 4 ) ] )", 4),
    ("7", 7),
]


def write_listops(folder: Path, rows=ROWS, header: bool = True, newline: str = "\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = (["Source\tTarget"] if header else []) + [f"{source}\t{target}" for source, target in rows]
        (folder / f"basic_{split}.tsv").write_text(newline.join(lines) + newline)
    return folder


def token_ids(*tokens: str) -> list[int]:
    return [VOCAB.index(token) for token in tokens]


def content_tokens(source: str) -> list[str]:
    """The tokens a model sees: everything but LRA's parentheses."""
    return [token for token in source.split() if token not in ("(", ")")]


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[SM 5 6 7 ]", 8),  # 18 mod 10
        ("[MIN 3 [MAX 1 0 ] 5 ]", 1),
        ("[MED 9 0 4 ]", 4),
        ("[MED 1 2 ]", 1),  # int(np.median([1, 2])) = int(1.5)
        ("[MED 2 9 4 7 ]", 5),  # int(5.5)
        ("[SM [MED 1 2 3 4 ] [MAX 9 8 ] 5 ]", 6),  # 2 + 9 + 5 = 16
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),
        ("3", 3),
    ],
)
def test_evaluate_hand_worked(source: str, value: int) -> None:
    assert evaluate(source) == value


@pytest.mark.parametrize("source", ["[MAX 2 9", "[MAX ]", "2 3", "[FOO 1 ]", "]", ""])
def test_evaluate_rejects_malformed(source: str) -> None:
    with pytest.raises(ValueError):
        evaluate(source)


def test_to_source_matches_lra_parenthesisation() -> None:
    assert to_source(("[MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert to_source(("[SM", [("[MIN", [4, 7]), 0])) == "( ( ( [SM ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"


def operator_depth_and_arity(source: str) -> tuple[int, int, int]:
    """(deepest operator nesting, fewest and most arguments of any operator) of a Source string."""
    stack: list[int] = []
    depth, arities = 0, []
    for token in source.split():
        if token.startswith("["):
            if stack:
                stack[-1] += 1
            stack.append(0)
            depth = max(depth, len(stack))
        elif token == "]":
            arities.append(stack.pop())
        elif token.isdigit() and stack:
            stack[-1] += 1
    return depth, min(arities), max(arities)


def test_generator_respects_window_depth_and_arity() -> None:
    examples = generate_examples(300, min_len=20, max_len=120, max_depth=4, max_args=5, seed=1)
    assert len({source for source, _ in examples}) == 300
    for source, label in examples:
        length = len(content_tokens(source))
        assert 20 < length < 120  # LRA keeps min_len < length < max_len
        assert evaluate(source) == label
        assert source.count("(") == source.count(")")
        depth, fewest, most = operator_depth_and_arity(source)
        assert depth <= 3  # operators only above max_depth
        assert 2 <= fewest and most <= 5  # 2..max_args arguments
    assert max(operator_depth_and_arity(source)[0] for source, _ in examples) == 3


def test_generator_labels_cover_all_classes_and_are_seeded() -> None:
    examples = generate_examples(500, min_len=20, max_len=200, seed=3)
    counts = Counter(label for _, label in examples)
    assert set(counts) == set(range(10))
    assert min(counts.values()) > 15  # every class well represented (MIN/MAX make 0 and 9 the largest)
    assert generate_examples(50, 20, 200, seed=3) == examples[:50]
    assert generate_examples(50, 20, 200, seed=4) != examples[:50]


def test_generator_lra_lengths_are_fast_enough() -> None:
    examples = generate_examples(200, min_len=500, max_len=2000, seed=0)
    assert all(500 < len(content_tokens(source)) < 2000 for source, _ in examples)


def test_generator_rejects_impossible_window() -> None:
    with pytest.raises(ValueError, match="widen the length window"):
        generate_examples(20, min_len=0, max_len=2, max_depth=2)  # only the 10 single digits fit


def test_generate_command_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "listops"
    main(["generate", "--out", str(out), "--train", "60", "--val", "20", "--test", "20",
          "--min-len", "20", "--max-len", "200", "--seed", "5"])  # fmt: skip
    lines = {split: (out / f"basic_{split}.tsv").read_text().splitlines() for split in SPLITS}
    assert all(split_lines[0] == "Source\tTarget" for split_lines in lines.values())
    assert [len(split_lines) - 1 for split_lines in lines.values()] == [60, 20, 20]
    sources = [line.split("\t")[0] for split_lines in lines.values() for line in split_lines[1:]]
    assert len(set(sources)) == 100  # splits are disjoint

    module = ListOpsDataModule(data_dir=str(out), batch_size=8)
    module.setup("fit")
    assert [len(module.datasets[split]) for split in SPLITS] == [60, 20, 20]
    first_source, first_target = lines["train"][1].split("\t")
    item = module.datasets["train"][0]
    assert item["y"] == int(first_target) == evaluate(first_source)
    assert len(item["x"]) == len(content_tokens(first_source))


@pytest.mark.parametrize(("header", "newline"), [(True, "\n"), (False, "\n"), (True, "\r\n")])
def test_reads_release_format(tmp_path: Path, header: bool, newline: str) -> None:
    module = ListOpsDataModule(data_dir=str(write_listops(tmp_path, header=header, newline=newline)))
    module.setup()
    train = module.datasets["train"]
    assert len(train) == len(ROWS)
    assert train[0]["x"].tolist() == token_ids("[MAX", "2", "9", "]")
    assert train[1]["x"].tolist() == token_ids("[SM", "[MIN", "4", "7", "]", "0", "]")
    assert [train[i]["y"] for i in range(len(ROWS))] == [target for _, target in ROWS]


def test_attributes_and_batches(tmp_path: Path) -> None:
    module = ListOpsDataModule(data_dir=str(write_listops(tmp_path)), batch_size=4)
    assert (module.num_classes, module.vocab_size, module.input_dim, module.seq_len, module.objective) == (
        10, 16, None, 2000, "classification")  # fmt: skip
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert batch["x"].dtype == torch.long and batch["x"].shape == (4, 7)
    assert batch["mask"].sum(dim=1).tolist() == [4, 7, 5, 1]
    assert (batch["x"][~batch["mask"]] == 0).all() and (batch["x"][batch["mask"]] > 0).all()
    assert batch["y"].tolist() == [9, 4, 4, 7] and batch["index"].tolist() == [0, 1, 2, 3]


def test_truncates_to_max_len_and_pads_to_max(tmp_path: Path) -> None:
    folder = write_listops(tmp_path)
    module = ListOpsDataModule(data_dir=str(folder), batch_size=4, max_len=5, pad_to_max=True)
    module.setup()
    batch = next(iter(module.test_dataloader()))
    assert batch["x"].shape == (4, 5) and batch["mask"].sum(dim=1).tolist() == [4, 5, 5, 1]


def test_lra_release_subfolder_is_found(tmp_path: Path) -> None:
    write_listops(tmp_path / "lra_release" / "lra_release" / "listops-1000")
    module = ListOpsDataModule(data_dir=str(tmp_path))
    module.setup()
    assert len(module.datasets["test"]) == len(ROWS)


def test_missing_folder_error_names_files_and_generate_command(tmp_path: Path) -> None:
    module = ListOpsDataModule(data_dir=str(tmp_path / "nowhere"))
    module.prepare_data()  # download is off: nothing happens
    with pytest.raises(DataFolderError) as error:
        module.setup()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "basic_train.tsv" in message
    assert f"python -m datamodules.listops generate --out {tmp_path / 'nowhere'}" in message
    assert "lra_release.gz" in message and "download: true" in message


def test_generate_command_as_documented(tmp_path: Path) -> None:
    """The exact `python -m datamodules.listops generate ...` command the error messages print."""
    sizes = ["--train", "5", "--val", "2", "--test", "2", "--min-len", "20", "--max-len", "60"]
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "datamodules.listops", "generate"]
    repo = Path(__file__).parents[1]
    arguments = [*command, "--out", str(tmp_path), *sizes]
    result = subprocess.run(arguments, capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "wrote 5 train, 2 val, 2 test examples" in result.stdout
    assert len((tmp_path / "basic_val.tsv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("setup", "extra", "problem"),
    [
        (lambda out: None, ["--train", "-5"], "split sizes must be positive"),
        (lambda out: out.write_text("not a folder"), [], "is a file"),
        (lambda out: (out.mkdir(), (out / "basic_val.tsv").write_text("keep me")), [], "already holds basic_val.tsv"),
    ],
)
def test_generate_command_refuses_before_generating(tmp_path: Path, capsys, setup, extra, problem) -> None:
    out = tmp_path / "listops"
    setup(out)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(out), "--val", "2", "--test", "2", "--min-len", "20", "--max-len", "60",
              *(extra or ["--train", "5"])])  # fmt: skip
    assert exit_info.value.code == 2 and problem in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written


def test_generate_overwrite_replaces_existing_splits(tmp_path: Path) -> None:
    (tmp_path / "basic_val.tsv").write_text("old")
    args = ["generate", "--out", str(tmp_path), "--train", "5", "--val", "2", "--test", "2", "--min-len", "20",
            "--max-len", "60", "--overwrite"]  # fmt: skip
    main(args)
    assert (tmp_path / "basic_val.tsv").read_text().startswith("Source\tTarget\n")
    assert not list(tmp_path.glob(".*.tmp"))
