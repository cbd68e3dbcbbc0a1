"""The reference vectors under ``tests/fixtures/<name>/`` (spec.json, reference.npz): the
recipe weights they were made with and the stored outputs, and the relative error the
fixture tests compare with."""

import json
import os

import numpy as np

from detr_jax.convert.recipe import recipe_state_dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def rel(a, b) -> float:
    """Relative norm error of ``a`` against the reference ``b``."""
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def load_fixture(name: str) -> tuple[dict, dict]:
    """(the recipe state dict of ``spec.json``'s keys and seed, the arrays of
    ``reference.npz``) of ``tests/fixtures/<name>``."""
    directory = os.path.join(FIXTURES, name)
    with open(os.path.join(directory, "spec.json")) as f:
        spec = json.load(f)
    with np.load(os.path.join(directory, "reference.npz")) as data:
        reference = {k: data[k] for k in data.files}
    keys = [(key, tuple(shape)) for key, shape in spec["state_dict_spec"]]
    return recipe_state_dict(keys, seed=int(spec["seed"])), reference


def record_errors(record_property, out: dict, reference: dict, case: str, memory, memory_ref):
    """Record the parity errors a fixture test checks (max abs of logits and boxes, relative
    norm of the encoder memory) as test properties: ``pytest --junitxml`` then lists them,
    so a run on another device or at another matmul precision gives its figures."""
    record_property("pred_logits_max_abs", float(np.abs(
        np.asarray(out["pred_logits"], np.float64) - reference[f"{case}/pred_logits"]).max()))
    record_property("pred_boxes_max_abs", float(np.abs(
        np.asarray(out["pred_boxes"], np.float64) - reference[f"{case}/pred_boxes"]).max()))
    record_property("memory_rel", rel(memory, memory_ref))
