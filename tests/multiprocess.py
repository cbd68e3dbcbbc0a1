"""Helpers for tests that start several JAX processes on localhost."""

import os
import socket

import pytest

skip_unless_multihost = pytest.mark.skipif(os.environ.get("DETR_JAX_SKIP_MULTIHOST") == "1",
                                           reason="DETR_JAX_SKIP_MULTIHOST=1")


def free_port() -> int:
    """A free TCP port on localhost for the jax.distributed coordinator."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
