"""Placing host values on a device mesh that may span several processes."""

from __future__ import annotations

import jax
import numpy as np


def replicate(tree, sharding):
    """Host values -> global arrays replicated over ``sharding``'s devices.

    In a multi-process run the sharding spans other hosts' devices, which ``device_put``
    cannot reach; every process passes the same host values and provides its own shards.
    """
    def one(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(one, tree)
