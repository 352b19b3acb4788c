"""Shared pytest fixtures. Append new fixtures in their own section; keep them session-scoped
when they are expensive."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# --- real language model and corpus (harvest, lm) ------------------------------------------


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    """WikiText-2 raw test split, kept outside the repository in ../shared/data."""
    path = SHARED_DATA / "wikitext-2-raw-test.txt"
    if not path.is_file():
        pytest.fail(f"test corpus missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): the embedded SmolLM2-135M-Instruct, loaded once per session."""
    from hf_topafa.lm import embedded_gguf_path, load_language_model

    try:
        embedded_gguf_path()
    except ModuleNotFoundError as err:
        pytest.fail(str(err))
    return load_language_model()


# --- threads ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """Small forwards: one thread avoids stalls at thread barriers on a busy shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
