"""The Hugging Face peer benchmark's table (no torch needed for it)."""

from benchmarks.peers import OURS_PRECISION, table


def test_table_gives_the_fastest_peer_over_ours_and_marks_failures():
    rows = [{"runner": "detr_jax", "precision": "tf32", "batch": 8, "ms_per_image": 3.0},
            {"runner": "hf_eager", "precision": "tf32", "batch": 8, "ms_per_image": 9.0},
            {"runner": "hf_compile", "precision": "tf32", "batch": 8, "ms_per_image": 7.5},
            {"runner": "detr_jax", "precision": "bf16", "batch": 8, "ms_per_image": 2.0},
            {"runner": "hf_eager", "precision": "bf16", "batch": 8, "error": "OOM"},
            {"runner": "hf_compile", "precision": "bf16", "batch": 8, "error": "OOM"}]
    lines = table(rows, ["tf32", "bf16"], [8], ["eager", "compile"]).splitlines()
    assert lines[2] == "| tf32 | 8 | 3.00 | 9.00 | 7.50 | 2.50x |"
    assert lines[3] == "| bf16 | 8 | 2.00 | failed | failed | n/a |"


def test_our_precisions_are_the_benchmark_s():
    from detr_jax.benchmark import PRECISIONS
    assert set(OURS_PRECISION.values()) <= set(PRECISIONS)
