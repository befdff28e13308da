"""What tests of core's executors and trainers share: the worker's warm engines over the bundled models and tiny
pipelines of every family."""

from __future__ import annotations

import pytest

from core.registry import ModelRegistry
from tests.conftest import REPO


@pytest.fixture(scope="session")
def engines(tiny_models_dir):
    from core.runner import Engines

    return Engines(ModelRegistry([REPO / "models", tiny_models_dir]), device="cpu", torch_threads=1)
