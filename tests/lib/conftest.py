"""Shared fixtures of the library tests."""
import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread avoids oversubscription when other jobs share the 2 cores
    (measured here: up to 60× faster than two threads under contention)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
