"""Hugging Face transformers Conditional DETR checkpoints -> official
Atten4Vis/ConditionalDETR keys.

Two namings of ``ConditionalDetrForObjectDetection`` are read:

* the hub files (``microsoft/conditional-detr-resnet-50``, and what ``save_pretrained``
  writes): the decoder keeps the official projection names under ``model.decoder.layers.N.``
  (``sa_qcontent_proj``, ..., ``ca_qpos_sine_proj``), with ``self_attn.out_proj`` and
  ``encoder_attn.out_proj`` (= ``cross_attn.out_proj``);
* the in-memory names of transformers 5: the projections inside the attention modules,
  ``self_attn.{q_content,q_pos,k_content,k_pos,v}_proj`` (= ``sa_*``) and
  ``encoder_attn.{q_content,q_pos,k_content,k_pos,v,q_pos_sine}_proj`` (= ``ca_*``), and
  ``o_proj`` for the output projections.

``decoder.query_scale`` and ``decoder.ref_point_head`` map one to one. Everything else
(backbone, encoder, layer norms, FFN, input projection, queries, heads) is named as in
transformers' DETR and is renamed by :func:`detr_jax.convert.hf.hf_to_official`. The
class head has ``num_labels`` sigmoid outputs, as the official one.
"""

from __future__ import annotations

import re

import numpy as np

from detr_jax.convert import hf

_DECODER_RE = re.compile(
    r"decoder\.(?:layers\.(\d+)\.(?:(sa_\w+|ca_\w+)|(self_attn|encoder_attn)\.(\w+))"
    r"|(query_scale|ref_point_head)\.layers\.(\d+))\.(weight|bias)")
_INNER = {"q_content_proj": "qcontent_proj", "q_pos_proj": "qpos_proj",
          "k_content_proj": "kcontent_proj", "k_pos_proj": "kpos_proj", "v_proj": "v_proj",
          "q_pos_sine_proj": "qpos_sine_proj"}
_MARKERS = ("query_scale", "ref_point_head", "qcontent_proj", "qpos_sine_proj")
_OUTPUT = {"self_attn": "self_attn", "encoder_attn": "cross_attn"}


def conditional_official_key(hf_key: str) -> str | None:
    """Official name of a transformers Conditional DETR decoder key that DETR's renaming
    does not cover (the conditional projections, output projections, ``query_scale``,
    ``ref_point_head``); None for any other key."""
    m = _DECODER_RE.fullmatch(hf._strip_prefixes(hf_key))
    if m is None:
        return None
    layer, flat, attention, inner, mlp, mlp_index, kind = m.groups()
    if mlp is not None:
        return f"transformer.decoder.{mlp}.layers.{mlp_index}.{kind}"
    prefix = f"transformer.decoder.layers.{layer}."
    if flat is not None:
        return prefix + f"{flat}.{kind}"
    if inner in ("o_proj", "out_proj"):
        return prefix + f"{_OUTPUT[attention]}.out_proj.{kind}"
    if inner in _INNER and (attention == "encoder_attn" or inner != "q_pos_sine_proj"):
        return prefix + ("sa_" if attention == "self_attn" else "ca_") + f"{_INNER[inner]}.{kind}"
    return None


def is_hf_conditional_layout(state) -> bool:
    """True when some key is a transformers Conditional DETR decoder name: a conditional
    projection, ``query_scale`` or ``ref_point_head`` (DETR's transformers keys and the
    official keys, which start with ``transformer.``, never are)."""
    for key in state:
        if not isinstance(key, str) or key.startswith("transformer."):
            continue
        name = conditional_official_key(key)
        if name is not None and any(marker in name for marker in _MARKERS):
            return True
    return False


def hf_conditional_to_official(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Rename a transformers Conditional DETR state dict (numpy arrays) to the official keys.

    Raises CheckpointError naming ``source`` and the first keys that cannot be mapped or
    that map onto the same official key.
    """
    from detr_jax.convert.errors import CheckpointError, first
    out: dict[str, np.ndarray] = {}
    rest: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    duplicates = []
    for key, value in state.items():
        name = conditional_official_key(key)
        if name is None:
            rest[key] = value
        elif name in origin:
            duplicates.append(f"{origin[name]} and {key} -> {name}")
        else:
            origin[name] = key
            out[name] = value
    if duplicates:
        raise CheckpointError(f"{source}: several transformers keys give one official key: "
                              f"{first(duplicates, 3)}")
    renamed = hf.hf_to_official(rest, source) if rest else {}
    clash = sorted(set(renamed) & set(out))
    if clash:
        raise CheckpointError(f"{source}: several transformers keys give one official key: "
                              f"{first(clash, 3)}")
    out.update(renamed)
    return out
