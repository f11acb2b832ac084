"""Test set-up: offline, a temporary CHARTER_HOME per test, and one shared converted embedded model.

The embedded model's GGUF -> safetensors conversion (~20 s) is cached across test sessions in
``$CHARTER_TEST_CACHE`` (default ``<clone>/.cache/charter-test``, ignored by git: inside the clone, so a fresh
clone, as CI makes, converts for real instead of reusing a home folder that survives between runs);
everything else a test writes lives in a temporary home that disappears with the test. The hub is switched off
whatever the environment says: no test may download.
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CHARTER_TEST_CACHE") or ROOT / ".cache" / "charter-test")


@pytest.fixture(autouse=True)
def charter_home(tmp_path, monkeypatch):
    """Point CHARTER_HOME at a fresh temp dir whose models/ is the shared cache."""
    home = tmp_path / "home"
    home.mkdir()
    (CACHE / "models").mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(CACHE / "models", target_is_directory=True)
    monkeypatch.setenv("CHARTER_HOME", str(home))
    return home


def resolve_cached(ref: str) -> str:
    """A packaged model's converted folder, converted once into the shared test cache (not a test's home)."""
    from charter import models

    old = os.environ.get("CHARTER_HOME")
    os.environ["CHARTER_HOME"] = str(CACHE)
    try:
        return models.resolve(ref)
    finally:
        if old is None:
            os.environ.pop("CHARTER_HOME", None)
        else:
            os.environ["CHARTER_HOME"] = old


@pytest.fixture(scope="session")
def embedded_path():
    """The converted embedded model directory (converted once per cache)."""
    return resolve_cached("embedded")


@pytest.fixture
def one_thread():
    """One torch thread: on 2 cores shared with other jobs, two OpenMP threads per process spin against each
    other (measured 10-20x slower generation than one thread). Used by the model-heavy evaluation tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
