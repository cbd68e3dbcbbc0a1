"""Static-size bucketing for data-dependent cluster counts.

Under ``jit`` every shape is static, but the number of clusters depends on the data. A
*ladder* of capacities (fractions of the token count, e.g. N/16, N/8, N/4, N/2, N) is fixed
when tracing; at run time the smallest capacity that holds the largest cluster count of the
batch is chosen and the work runs at that static size (``lax.switch`` over one compiled
branch per capacity). The top rung is always N, so no cluster is ever dropped or merged.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

DEFAULT_LADDER = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def parse_ladder(value: "str | float | int | Sequence[float]") -> tuple[float, ...]:
    """Ladder fractions from a tuple of fractions or a string of divisors.

    ``"16/8/4/2/1"`` (divisors of N: N/16, N/8, ...) and ``(1/16, 1/8, 0.25, 0.5, 1)``
    (fractions) give the same ladder; a single number is one divisor. Returns sorted
    unique fractions in (0, 1].
    """
    if isinstance(value, str):
        try:
            fractions = [1.0 / float(part) for part in value.split("/") if part.strip()]
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"ladder {value!r}: expected divisors such as 16/8/4/2/1") from None
    elif isinstance(value, (int, float)):
        fractions = [1.0 / float(value)]
    else:
        fractions = [float(f) for f in value]
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"ladder {value!r}: fractions must lie in (0, 1] (divisors >= 1)")
    return tuple(sorted(set(fractions)))


def format_ladder(fractions: Sequence[float]) -> str:
    """The divisor string ``parse_ladder`` reads: (1/16, ..., 1) -> ``"16/8/4/2/1"``."""
    return "/".join(f"{1 / f:g}" for f in reversed(tuple(fractions)))


def ladder_capacities(num_tokens: int, fractions: Sequence[float] = DEFAULT_LADDER,
                      ) -> tuple[int, ...]:
    """Static capacities ``ceil(f * N)`` for the ladder, ascending, unique, ending with N."""
    sizes = {max(1, math.ceil(f * num_tokens - 1e-9)) for f in fractions}
    sizes = {min(s, num_tokens) for s in sizes} | {num_tokens}
    return tuple(sorted(sizes))


def capacity_index(needed: jax.Array, capacities: Sequence[int]) -> jax.Array:
    """Index of the smallest capacity >= ``needed`` (a scalar count); int32 scalar."""
    caps = jnp.asarray(capacities, jnp.int32)
    index = jnp.sum(caps < jnp.asarray(needed, jnp.int32), dtype=jnp.int32)
    return jnp.minimum(index, len(capacities) - 1)


def run_at_capacity(needed: jax.Array, capacities: Sequence[int],
                    branch: Callable[[int], Any], *, remat: bool = False) -> tuple[Any, jax.Array]:
    """Run ``branch(capacity)`` at the smallest static capacity holding ``needed`` clusters.

    Args:
      needed: scalar int, the largest cluster count that must fit.
      capacities: ascending static capacities (``ladder_capacities``).
      branch: maps a static capacity to a pytree of arrays whose shapes do not depend on
        the capacity.
      remat: wrap each branch in ``jax.checkpoint``. Differentiating a ``lax.switch``
        keeps the residuals of *every* branch (each branch fills the others' with zeros),
        so branches that save (rows, capacity) attention probabilities hold about twice
        the largest rung's memory; with ``remat`` a branch saves only its inputs and the
        backward pass recomputes the chosen branch. Forward-only use is unaffected.
    Returns:
      (branch output, the capacity used as an int32 scalar). Outside a trace the chosen
      branch runs directly; under a trace one ``lax.switch`` holds every branch, so the
      function compiles once for all cluster counts.
    """
    index = capacity_index(needed, capacities)
    used = jnp.asarray(capacities, jnp.int32)[index]
    if not isinstance(index, jax.core.Tracer):
        return branch(capacities[int(index)]), used
    if remat:
        branches = [jax.checkpoint(lambda c=c: branch(c)) for c in capacities]
    else:
        branches = [lambda c=c: branch(c) for c in capacities]
    return jax.lax.switch(index, branches), used
