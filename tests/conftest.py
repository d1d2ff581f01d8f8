"""Test-wide settings: offline hubs and a private filter cache per test session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _filter_cache(tmp_path_factory):
    if "ESSSM_CACHE_DIR" not in os.environ:
        os.environ["ESSSM_CACHE_DIR"] = str(tmp_path_factory.mktemp("filters"))
    yield
