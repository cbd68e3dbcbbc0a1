import numpy as np

import detr_jax


def test_postprocess_matches_official_rule():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
    boxes = rng.uniform(0.2, 0.6, size=(2, 5, 4)).astype(np.float32)
    sizes = np.array([[480, 640], [300, 200]])
    results = detr_jax.postprocess({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for b in range(2):
        prob = np.exp(logits[b]) / np.exp(logits[b]).sum(-1, keepdims=True)
        np.testing.assert_allclose(results[b]["scores"], prob[:, :-1].max(-1), rtol=1e-6)
        np.testing.assert_array_equal(results[b]["labels"], prob[:, :-1].argmax(-1))
        h, w = sizes[b]
        cx, cy, bw, bh = boxes[b].T
        expected = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        np.testing.assert_allclose(results[b]["boxes"], expected, rtol=1e-5, atol=1e-4)
