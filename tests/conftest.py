"""Fixtures shared by test modules that opt in with ``pytestmark``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when the CPU is shared.

    Module-scoped, so it is in place before module-scoped fixtures (e.g. a server thread) start.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
