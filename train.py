#!/usr/bin/env python3
"""Train or fine-tune DETR on one or many devices and hosts; resumes from --workdir.

    python train.py --config configs/synthetic_demo.py --workdir runs/demo
"""

import sys

from detr_jax.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
