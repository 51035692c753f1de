"""Fixtures of the Ray replica tests. The checkpoint and the voice recordings (``voice_files``)
come from the shared test-support plugin (``vllm_cpu_test_support.fixtures``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(chatterbox_checkpoint: Path) -> Path:
    """This folder's tiny checkpoint: the whole product's, written by its own composer."""
    return chatterbox_checkpoint
