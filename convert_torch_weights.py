#!/usr/bin/env python3
"""Convert official PyTorch (or Hugging Face) DETR weights into a detr_jax checkpoint.

    python convert_torch_weights.py --checkpoint detr-r50-dc5-f0fb7ef5.pth --output checkpoints/detr-r50-dc5
"""

import sys

from detr_jax.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
