"""The model config's matmul_precision: traced into every product of the model (forward,
gradients, the training loss), validated, and part of what compiled programs depend on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detr_jax.models.build import build_model, with_config
from detr_jax.models.config import tiny_model_config
from detr_jax.precision import check_matmul_precision, config_matmul_precision


def _precisions(jaxpr):
    """The precision parameter of every dot_general / convolution in ``jaxpr`` (nested)."""
    found = []

    def visit(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append(eqn.params.get("precision"))
            for value in eqn.params.values():
                for sub in (value if isinstance(value, (list, tuple)) else [value]):
                    if hasattr(sub, "jaxpr"):
                        visit(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
                    elif hasattr(sub, "eqns"):
                        visit(sub)
    visit(jaxpr.jaxpr)
    return found


def _forward_jaxpr(model):
    graphdef, state = nnx.split(model)
    pixels, mask = jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64), bool)

    def run(state):
        return nnx.merge(graphdef, state)(pixels, mask)["pred_boxes"].sum()
    return jax.make_jaxpr(jax.grad(run))(state)


def test_effective_precision_names_the_one_in_force():
    from detr_jax.precision import effective_matmul_precision
    assert effective_matmul_precision({"matmul_precision": "high"}) == "high"
    assert effective_matmul_precision({}) == "default"
    with jax.default_matmul_precision("highest"):
        assert effective_matmul_precision({}) == "highest"
        assert effective_matmul_precision({"matmul_precision": "high"}) == "high"


def test_values_are_checked():
    assert check_matmul_precision("high") == "high"
    with pytest.raises(ValueError, match="model.matmul_precision='fp32': expected one of"):
        config_matmul_precision({"matmul_precision": "fp32"})
    assert config_matmul_precision({}) == "default"  # configs saved before the field
    with pytest.raises(ValueError, match="matmul_precision"):
        build_model(tiny_model_config(matmul_precision="bf16x3"))


@pytest.mark.parametrize("detector", ["detr", "conditional_detr"])
def test_every_product_of_forward_and_gradient_uses_the_setting(detector):
    from detr_jax.models.registry import detector_config
    cfg = detector_config(detector)(**dict(tiny_model_config(), detector=detector))
    model = build_model(cfg, seed=0)
    default = _precisions(_forward_jaxpr(model))
    assert default and all(p in (None, (jax.lax.Precision.DEFAULT,) * 2) for p in default), set(default)
    # "default" leaves JAX's own setting in force (e.g. a caller's, as the parity scripts')
    with jax.default_matmul_precision("high"):
        outer = _precisions(_forward_jaxpr(model))
    assert all(p == (jax.lax.Precision.HIGH,) * 2 for p in outer), set(outer)
    highest = _precisions(_forward_jaxpr(with_config(model, matmul_precision="highest")))
    assert len(highest) == len(default)
    assert all(p == (jax.lax.Precision.HIGHEST,) * 2 for p in highest), set(highest)


def test_with_config_keeps_parameters_and_attention():
    model = build_model(tiny_model_config(), encoder_attention="act:L=8", seed=0)
    new = with_config(model, matmul_precision="high")
    assert new.config["matmul_precision"] == "high" and new.attention_spec == model.attention_spec
    old = dict(nnx.to_flat_state(nnx.state(model)))
    for path, var in nnx.to_flat_state(nnx.state(new)):
        assert var.get_value() is old[path].get_value()
    # a different graph definition: a jitted function of it compiles anew
    assert nnx.split(new)[0] != nnx.split(model)[0]


def test_training_step_uses_the_setting():
    from detr_jax.training.defaults import train_config
    from detr_jax.training.losses import LossWeights
    from detr_jax.training.trainer import Trainer
    n = jax.device_count()
    train_cfg = train_config(global_batch=n, max_targets=2)
    model = build_model(tiny_model_config(matmul_precision="highest"), seed=0)
    trainer = Trainer(model, train_cfg, LossWeights())
    batch = {"pixel_values": np.zeros((n, 64, 64, 3), np.float32),
             "padding_mask": np.zeros((n, 64, 64), bool),
             "labels": np.ones((n, 2), np.int32), "valid": np.array([[True, False]] * n),
             "boxes": np.full((n, 2, 4), 0.5, np.float32)}
    jaxpr = jax.make_jaxpr(trainer._train_step)(trainer.state, trainer.rest, batch)
    found = _precisions(jaxpr)
    assert found and all(p == (jax.lax.Precision.HIGHEST,) * 2 for p in found), set(found)


def test_flags():
    from detr_jax.benchmark import _dtype_and_matmul, build_parser as bench_parser
    from detr_jax.evaluation.cli import build_parser as eval_parser
    from detr_jax.training.cli import build_parser as train_parser
    args = train_parser().parse_args(["--config", "c", "--workdir", "w", "--matmul-precision", "high"])
    assert args.matmul_precision == "high"
    assert eval_parser().parse_args(["--checkpoint", "c"]).matmul_precision is None
    assert bench_parser().parse_args(["--config", "c", "--matmul-precision", "highest"]).matmul_precision == "highest"
    assert _dtype_and_matmul("highest", "default") == ("float32", "highest")
    assert _dtype_and_matmul("bf16", "high") == ("bfloat16", "high")
    assert _dtype_and_matmul("default", "default") == ("float32", "default")
