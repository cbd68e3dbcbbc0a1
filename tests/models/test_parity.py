"""Parity with the official PyTorch DETR-DC5 on the fixture's recipe weights (fp32, CPU)."""

import jax.numpy as jnp
import numpy as np
import pytest

import detr_jax
from detr_jax.models.inference import Forward
from tests.fixture_vectors import record_errors


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def forward(dc5_model):
    return Forward(dc5_model, return_intermediates=True)


def run_case(forward, reference, case, images):
    batch = detr_jax.preprocess([reference[i] for i in images], resize_images=False)
    np.testing.assert_array_equal(batch.padding_mask, reference[f"{case}/pixel_padding_mask"])
    # our normalization and padding reproduce the official input (every 8th pixel stored)
    np.testing.assert_allclose(batch.pixel_values[:, ::8, ::8].transpose(0, 3, 1, 2),
                               reference[f"{case}/pixel_values_sub8"], rtol=0, atol=1e-6)
    return forward(jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask))


@pytest.mark.parametrize("case,images,channel_step", [
    ("exact_single", ["image0"], 8),
    ("exact_batch", ["image0", "image1"], 16),
])
def test_matches_official_detr(forward, reference, case, images, channel_step, record_property):
    out = run_case(forward, reference, case, images)
    np.testing.assert_array_equal(np.asarray(out["feature_mask"]),
                                  reference[f"{case}/feature_padding_mask"])
    backbone = np.asarray(out["backbone"]).transpose(0, 3, 1, 2)[:, ::channel_step]
    assert rel(backbone, reference[f"{case}/backbone_ch{channel_step}"]) < 1e-4
    assert rel(np.asarray(out["pos_embed"]).transpose(0, 3, 1, 2), reference[f"{case}/pos_embed"]) < 1e-4
    record_errors(record_property, out, reference, case,
                  np.asarray(out["memory"]).transpose(1, 0, 2), reference[f"{case}/memory"])
    assert rel(np.asarray(out["memory"]).transpose(1, 0, 2), reference[f"{case}/memory"]) < 1e-4
    np.testing.assert_allclose(out["pred_logits"], reference[f"{case}/pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["pred_boxes"], reference[f"{case}/pred_boxes"], rtol=0, atol=1e-4)


def test_padded_batch_differs_from_single_as_official(forward, reference):
    """The official DC5 model changes image0's output when it is padded in a batch; so do we
    (the fixture's batch and single outputs for image0 differ by more than our error)."""
    single = reference["exact_single/pred_logits"][0]
    batched = reference["exact_batch/pred_logits"][0]
    assert np.abs(single - batched).max() > 1e-3
