"""Shared fixtures: small real Fashion-MNIST searches."""

import os

import pytest
import torch

from idarts.config import SearchConfig

# Two test processes on two cores thrash when each runs several OpenMP threads.
torch.set_num_threads(int(os.environ.get("IDARTS_TEST_THREADS", "1")))


@pytest.fixture
def tiny_config():
    """A search that runs in seconds on a CPU: 128 real images, 3 cells of 4 channels."""

    def make(**changes):
        settings = dict(
            dataset="fashion-mnist",
            subset=128,
            batch_size=16,
            layers=3,
            init_channels=4,
            partial_k=2,
            epochs=2,
            warmup_epochs=0,
            threshold=0.3,
            device="cpu",
        )
        settings.update(changes)
        return SearchConfig(**settings)

    return make
