"""Jitted inference over ``nnx.split`` state (the fast path the NNX guide recommends)."""

from __future__ import annotations

import jax
from flax import nnx


def on_device(state):
    """``state`` with every host (NumPy) leaf placed on the default device; arrays already
    on a device keep their placement (a sharded state keeps its sharding). Jitted calls
    over a loaded model's state should take this: host leaves are copied again on every
    call."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), state)


def inference_model(model):
    """A copy of ``model`` for jitted inference: the same arrays (not copied) except the
    backbone's, whose frozen BatchNorms are folded into their convolutions once
    (``fold_frozen_norms``). Unfolded, every call would fold each kernel again and
    transpose it into cuDNN's order: on an H200 a DETR-DC5 forward pass ran 430 kernels
    per call unfolded against 324 folded (0.55 ms more device time at batch 1). Outputs
    equal the model's up to rounding. ``model`` itself is left as it is (it may train or be saved)."""
    copy = nnx.clone(model)
    copy.fold_frozen_norms()
    return copy


class Forward:
    """``forward(pixel_values, padding_mask, rng=None)`` -> the model's output dict, jitted.

    The graph definition is closed over and the state passed as an argument, so a call
    costs no Python-side module traversal. The state is placed on the default device
    once, here: a model loaded from a checkpoint holds host (NumPy) arrays, which a jitted
    call would otherwise copy to the device again on every call (hundreds of transfers,
    milliseconds per call on a GPU). It is passed as its flat list of arrays
    (``state``; the tree is rebuilt inside the jit): a list is flattened in C++, where an
    ``nnx.State`` tree calls back into Python for every node, which cost about 0.4 ms per
    DETR-DC5 call on an H200's host. One compile per input shape; ``compiles`` counts
    them (a shape bucket ladder keeps it small). With ``fold_norms`` (the default) it runs
    ``inference_model(model)``; ``model`` itself is not changed.
    """

    def __init__(self, model, *, return_intermediates: bool = False, fold_norms: bool = True):
        self.graphdef, state = nnx.split(inference_model(model) if fold_norms else model)
        leaves, treedef = jax.tree.flatten(on_device(state))
        self.state = leaves  # the arguments of every call: a flat list of device arrays
        self.compiles = 0
        graphdef = self.graphdef

        def run(leaves, pixel_values, padding_mask, rng):
            self.compiles += 1  # runs at trace time only
            module = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
            out = module(pixel_values, padding_mask, rng=rng,
                         return_intermediates=return_intermediates)
            out.pop("aux_outputs", None)
            return out

        self._run = jax.jit(run)

    def __call__(self, pixel_values, padding_mask, rng=None):
        return self._run(self.state, pixel_values, padding_mask, rng)
