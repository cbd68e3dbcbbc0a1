import os

import numpy as np
import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def reference():
    """Trimmed official DETR-DC5 / ACT reference vectors (tests/data/README.md)."""
    with np.load(os.path.join(DATA, "detr_r50_dc5_official.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def recipe_weights():
    from detr_jax.convert.recipe import recipe_state_dict
    return recipe_state_dict()


@pytest.fixture(scope="session")
def dc5_model(recipe_weights):
    import detr_jax
    return detr_jax.load_torch_checkpoint(recipe_weights, dilation=True)


def pytest_configure(config):
    """Share compiled programs between tests that rebuild the same jitted functions
    (training tests build several trainers), through JAX's persistent cache."""
    import tempfile

    import jax
    cache = os.environ.get("DETR_JAX_TEST_CACHE") or tempfile.mkdtemp(prefix="detr_jax_jit_cache_")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # subprocesses started by the CLI and multi-process tests share it too
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
