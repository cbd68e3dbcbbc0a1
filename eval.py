#!/usr/bin/env python3
"""Evaluate a detr_jax checkpoint with one or more encoder-attention settings.

    python eval.py --checkpoint checkpoints/detr-r50-dc5 --images a.jpg b.png --output-dir out/
"""

import sys

from detr_jax.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
