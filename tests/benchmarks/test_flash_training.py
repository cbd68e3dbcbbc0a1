"""benchmarks/flash_training.py: the device check of the fused training call (here in the
Pallas interpreter) passes, and fails when the kernel's gradient is wrong."""

import jax.numpy as jnp

from benchmarks import flash_training


def test_check_passes_for_the_kernels():
    assert flash_training.main(["--check", "--batch", "2", "--tokens", "40",
                                "--dtypes", "float32"]) == 0


def test_check_fails_on_a_wrong_gradient(monkeypatch, capsys):
    real = flash_training.flash_attention

    def doubled_output(*args, **kwargs):  # twice the output: twice every gradient
        return real(*args, **kwargs) * jnp.float32(2.0)

    monkeypatch.setattr(flash_training, "flash_attention", doubled_output)
    assert flash_training.main(["--check", "--batch", "1", "--tokens", "24",
                                "--dtypes", "float32"]) == 1
    assert "FAILED" in capsys.readouterr().out
