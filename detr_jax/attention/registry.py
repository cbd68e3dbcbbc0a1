"""Parse attention settings such as ``exact`` or ``act:L=32,r=8`` into specs.

Every variant of the library is registered here, in one place: a new variant is one
module (its spec, its module, a ``*_from_string`` factory) plus one line below.
"""

from __future__ import annotations

from typing import Callable

from detr_jax.attention.act import ACT_USAGE, act_from_string
from detr_jax.attention.base import AttentionSpec
from detr_jax.attention.enact import ENACT_USAGE, enact_from_string
from detr_jax.attention.exact import Exact
from detr_jax.attention.kmeans import KMEANS_USAGE, kmeans_from_string

# name -> (factory taking keyword arguments parsed from the string, help text)
_REGISTRY: dict[str, tuple[Callable[..., AttentionSpec], str]] = {}


def register_attention(name: str, factory: Callable[..., AttentionSpec], usage: str) -> None:
    """Make ``name[:key=value,...]`` parse to ``factory(**{key: value})``."""
    _REGISTRY[name] = (factory, usage)


register_attention("exact", Exact, "exact")
register_attention("act", act_from_string, ACT_USAGE)
register_attention("kmeans", kmeans_from_string, KMEANS_USAGE)
register_attention("enact", enact_from_string, ENACT_USAGE)


def valid_forms() -> str:
    return ", ".join(usage for _, usage in _REGISTRY.values())


def _convert(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def parse_attention(spec: "str | AttentionSpec | None") -> AttentionSpec:
    """Turn a string (``"act:L=32,r=8"``), a spec, or None (exact) into an AttentionSpec."""
    if spec is None:
        return Exact()
    if isinstance(spec, AttentionSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"encoder attention must be a string or an AttentionSpec, got {spec!r}")
    name, _, args = spec.strip().partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {spec!r}; valid forms: {valid_forms()}")
    factory, usage = _REGISTRY[name]
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"attention {spec!r}: expected key=value, got {item!r}; form: {usage}")
        kwargs[key.strip()] = _convert(value.strip())
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"attention {spec!r}: {err}; form: {usage}") from None
