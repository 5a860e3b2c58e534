import pytest


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # The CI box and the dev box are small and shared: keep torch to two threads.
    import torch

    torch.set_num_threads(2)
    yield
