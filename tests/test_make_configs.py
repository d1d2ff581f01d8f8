"""`python conf/make_configs.py --check` passes on conf/ and catches hand-edited, missing and extra YAML.

The configs are rendered once for the module (every model is built on the CPU to count its
parameters: about a minute, no data, no training) and the CLI is run against that rendering.
"""

import importlib.util
import shutil
from pathlib import Path

import pytest

CONF = Path(__file__).parents[1] / "conf"
pytestmark = pytest.mark.e2e  # renders all configs: in CI, not in the everyday unit run


def load_make_configs():
    spec = importlib.util.spec_from_file_location("make_configs", CONF / "make_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_configs = load_make_configs()


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return make_configs.render()


@pytest.fixture
def run(rendered, monkeypatch):
    """make_configs.main(argv) with the module's one rendering."""
    monkeypatch.setattr(make_configs, "render", lambda: rendered)
    return make_configs.main


@pytest.mark.e2e
def test_check_passes_on_the_repository_conf(run, capsys):
    assert run(["--check"]) == 0, capsys.readouterr().out
    assert "match conf/make_configs.py" in capsys.readouterr().out


def test_check_catches_an_edited_value_a_missing_and_an_extra_file(run, tmp_path, capsys):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    edited = conf / "listops" / "esssm.yaml"
    edited.write_text(edited.read_text().replace("  lr: 0.0002\n", "  lr: 0.0003\n"))
    (conf / "quick" / "lm" / "fixed.yaml").unlink()
    (conf / "text" / "old_model.yaml").write_text("seed_everything: 0\n")

    assert run(["--check", "--conf-dir", str(conf)]) == 1
    out = capsys.readouterr().out
    assert f"differs: {edited}" in out
    assert "-  lr: 0.0003\n+  lr: 0.0002" in out
    assert f"missing: {conf / 'quick' / 'lm' / 'fixed.yaml'}" in out
    assert f"extra: {conf / 'text' / 'old_model.yaml'}" in out
    assert "3 config file(s)" in out


def test_what_the_writer_writes_passes_the_check(run, tmp_path, capsys):
    assert run(["--conf-dir", str(tmp_path)]) == 0
    assert run(["--check", "--conf-dir", str(tmp_path)]) == 0
    assert "match conf/make_configs.py" in capsys.readouterr().out


def test_check_refuses_a_conf_dir_that_is_not_a_folder(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--check", "--conf-dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "is not a folder" in capsys.readouterr().err
