"""Shared fixtures: a real local Ray instance, the tiny model, CUDA-gated `gpu` marker."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs) shared by the session's tests."""
    import ray

    from app.cluster import init_ray
    resources = init_ray(num_cpus=2)
    yield resources
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the 2-layer, 64-wide test model."""
    from app.models import load_policy
    return load_policy("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]
