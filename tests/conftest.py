"""Test-wide settings: offline hubs, a private filter cache per test session, one-thread modules."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _filter_cache(tmp_path_factory):
    if "ESSSM_CACHE_DIR" not in os.environ:
        os.environ["ESSSM_CACHE_DIR"] = str(tmp_path_factory.mktemp("filters"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module of tiny tensors (use with pytest.mark.usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# In-process calls of the command-line functions (esssm.lab.cli.main(...)) raise their errors, as
# with --debug, so tests can check the exception; subprocess tests of the one-line messages
# remove it from their environment.
os.environ.setdefault("ESSSM_DEBUG", "1")


@pytest.fixture(autouse=True)
def _restore_deterministic_mode():
    """An in-process fit with `trainer.deterministic: true` turns torch's deterministic algorithms on
    for the whole process (Lightning never turns them off); later tests would trace under it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)
