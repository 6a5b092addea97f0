import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, more threads spin-wait and run 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _image_cache(tmp_path_factory):
    """Decoded-image caches of the tests go to a temporary folder, not ~/.cache/edgessl."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESSL_CACHE", str(tmp_path_factory.mktemp("edgessl-cache")))
    yield
    mp.undo()
