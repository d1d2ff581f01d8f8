"""Every download's extractor keeps archive members inside its data folder (tar-slip): names
with "..", absolute names, "<prefix>//abs" names, symlinks and hardlinks that point out, and
a folder in the destination that is itself a link out. The invariant checked in each case:
nothing outside the data folder is created or changed, and a refused member is named."""

from __future__ import annotations

import io
import os
import tarfile
from functools import partial
from pathlib import Path

import pytest
import torch

from datamodules import DataFolderError, SCIFARDataModule, SpeechCommandsDataModule
from datamodules.archives import UnsafeArchiveError, extract_tar_file
from datamodules.pathfinder import extract_lra_folder
from datamodules.samples import write_cifar, write_speech_commands
from datamodules.sources import LRA_RELEASE_ROOT, download_lra_files

PATHFINDER_FOLDER = "pathfinder32/curv_contour_length_14"
LISTOPS_MEMBER = f"{LRA_RELEASE_ROOT}/listops-1000/basic_train.tsv"


def regular(name: str, data: bytes = b"payload") -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, io.BytesIO | None]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)  # as the downloaders do
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, data)
    return path


def files_outside(root: Path, data_dir: Path) -> dict[Path, bytes]:
    """Every file below `root` but outside `data_dir` (and not the archive), with its bytes."""
    return {
        path: path.read_bytes() for path in root.rglob("*")
        if path.is_file() and not path.is_relative_to(data_dir) and not path.name.endswith(".gz")
    }


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the data folder holding a file an escaping member would overwrite."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim").write_bytes(b"keep me")
    return folder


def escapes(prefix: str, outside: Path, base: Path) -> dict[str, list[tuple[tarfile.TarInfo, io.BytesIO | None]]]:
    """Hostile members below `prefix` (the part of a member name an extractor strips or keeps),
    aimed at `outside` from `base`, the folder where the rest of the name would land."""
    up = os.path.relpath(outside, base)  # "../.." as far as it takes to reach `outside`
    return {
        "dotdot": [regular(f"{prefix}{up}/victim")],
        "absolute": [regular(str(outside / "victim"))],
        "prefix-double-slash": [regular(f"{prefix}{outside / 'victim'}")],
        "symlink-relative": [link(f"{prefix}up", up, tarfile.SYMTYPE), regular(f"{prefix}up/victim")],
        "symlink-absolute": [link(f"{prefix}abs", str(outside), tarfile.SYMTYPE), regular(f"{prefix}abs/victim")],
        "hardlink": [link(f"{prefix}hard", str(outside / "victim"), tarfile.LNKTYPE)],
    }


CASES = ["dotdot", "absolute", "prefix-double-slash", "symlink-relative", "symlink-absolute", "hardlink"]


def check_refused_or_inside(run, tmp_path: Path, data_dir: Path, first: str, lands_inside: bool = False) -> None:
    """Run the extraction: it refuses the hostile member `first`, naming it and the archive (or
    skips it as not selected: DataFolderError, nothing taken); either way nothing outside changes."""
    before = files_outside(tmp_path, data_dir)
    if lands_inside:
        run()
    else:
        with pytest.raises((UnsafeArchiveError, DataFolderError)) as error:
            run()
        if isinstance(error.value, UnsafeArchiveError):
            assert f".gz: member {first!r}" in str(error.value)
    assert files_outside(tmp_path, data_dir) == before
    assert (tmp_path / "outside" / "victim").read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- the shared extractor


@pytest.mark.parametrize("case", CASES)
def test_extract_tar_file_keeps_members_inside(tmp_path: Path, outside: Path, case: str) -> None:
    data_dir = tmp_path / "data"
    members = escapes("top/", outside, data_dir / "top")[case]
    archive = write_tar(tmp_path / "a.tar.gz", members)
    # "top//abs/victim" is the relative path top/abs/victim: it lands inside, which is fine.
    extract = partial(extract_tar_file, archive, data_dir)
    check_refused_or_inside(extract, tmp_path, data_dir, members[0][0].name, case == "prefix-double-slash")
    if case == "prefix-double-slash":
        assert (data_dir / "top" / str(outside / "victim").lstrip("/")).read_bytes() == b"payload"


def test_a_folder_in_the_destination_that_links_out_is_not_followed(tmp_path: Path, outside: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "sub").symlink_to(outside)
    archive = write_tar(tmp_path / "a.tar.gz", [regular("sub/victim")])
    with pytest.raises(UnsafeArchiveError, match=f"member 'sub/victim' .*{outside / 'victim'}.*outside"):
        extract_tar_file(archive, data_dir)
    assert (outside / "victim").read_bytes() == b"keep me"


def test_devices_and_fifos_are_refused(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    archive = write_tar(tmp_path / "a.tar.gz", [(fifo, None)])
    with pytest.raises(UnsafeArchiveError, match="member 'pipe'"):
        extract_tar_file(archive, tmp_path / "data")
    assert not (tmp_path / "data" / "pipe").exists()


# ----------------------------------------------------------------------------- every download


@pytest.mark.parametrize("case", CASES)
def test_cifar_download_extracts_safely(tmp_path: Path, outside: Path, case: str, monkeypatch) -> None:
    import torchvision.datasets.utils

    data_dir = tmp_path / "cifar"
    members = escapes("cifar-10-batches-py/", outside, data_dir / "cifar-10-batches-py")[case]
    monkeypatch.setattr(
        torchvision.datasets.utils, "download_url", lambda url, root, name, md5: write_tar(Path(root) / name, members)
    )
    module = SCIFARDataModule(data_dir=str(data_dir), download=True)
    check_refused_or_inside(module.prepare_data, tmp_path, data_dir, members[0][0].name, case == "prefix-double-slash")


@pytest.mark.parametrize("case", CASES)
def test_speech_commands_download_extracts_safely(tmp_path: Path, outside: Path, case: str, monkeypatch) -> None:
    data_dir = tmp_path / "speech"
    members = escapes("./", outside, data_dir / "SpeechCommands" / "speech_commands_v0.02")[case]
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, hash_prefix: write_tar(Path(dst), members))
    module = SpeechCommandsDataModule(data_dir=str(data_dir), download=True)
    check_refused_or_inside(module.prepare_data, tmp_path, data_dir, members[0][0].name)


@pytest.mark.parametrize("case", CASES)
def test_pathfinder_stream_extracts_safely(tmp_path: Path, outside: Path, case: str) -> None:
    data_dir = tmp_path / "pathfinder"
    members = escapes(f"{LRA_RELEASE_ROOT}/{PATHFINDER_FOLDER}/", outside, data_dir / PATHFINDER_FOLDER)[case]
    archive = write_tar(tmp_path / "lra_release.gz", members)
    extract = partial(extract_lra_folder, data_dir, PATHFINDER_FOLDER, archive.as_uri())
    check_refused_or_inside(extract, tmp_path, data_dir, members[0][0].name)


@pytest.mark.parametrize("case", [*CASES, "wanted-symlink", "wanted-hardlink"])
def test_lra_file_download_extracts_safely(tmp_path: Path, outside: Path, case: str) -> None:
    """ListOps, Text, Retrieval: only the named files are taken, and never as links."""
    data_dir = tmp_path / "listops"
    members = {
        **escapes(f"{LRA_RELEASE_ROOT}/listops-1000/", outside, data_dir),
        "wanted-symlink": [link(LISTOPS_MEMBER, str(outside / "victim"), tarfile.SYMTYPE)],
        "wanted-hardlink": [link(LISTOPS_MEMBER, str(outside / "victim"), tarfile.LNKTYPE)],
    }[case]
    archive = write_tar(tmp_path / "lra_release.gz", members)
    download = partial(download_lra_files, data_dir, "listops-1000", ["basic_train.tsv"], archive.as_uri())
    check_refused_or_inside(download, tmp_path, data_dir, members[0][0].name)


# ----------------------------------------------------------------------------- real layouts still extract


def tar_folder(path: Path, folder: Path, arcname: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=arcname)
    return path


def test_cifar_and_speech_downloads_extract_the_official_layouts(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.utils

    cifar = write_cifar(tmp_path / "cifar_source", count=4) / "cifar-10-batches-py"
    monkeypatch.setattr(
        torchvision.datasets.utils, "download_url",
        lambda url, root, name, md5: tar_folder(Path(root) / name, cifar, "cifar-10-batches-py"),
    )
    module = SCIFARDataModule(data_dir=str(tmp_path / "cifar"), download=True, val_size=4)
    module.prepare_data()
    module.setup()
    assert len(module.datasets["test"]) == 4

    speech = write_speech_commands(tmp_path / "speech_source", count=1)
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda url, dst, hash_prefix: tar_folder(Path(dst), speech, ".")
    )
    module = SpeechCommandsDataModule(data_dir=str(tmp_path / "speech"), download=True, subset="sc10", stats_samples=2)
    module.prepare_data()
    module.setup()
    assert len(module.datasets["train"]) == 10
