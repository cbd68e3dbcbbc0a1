"""The demo detector with ENACT in every encoder layer, trained from scratch on the
synthetic benchmark with the same recipe and budget as configs/synthetic_demo.py.

    python train.py --config configs/enact_demo.py --workdir runs/enact_demo \
        --config.train.init_backbone=runs/demo_backbone
"""

import os

from detr_jax.config_cli import load_config_file


def get_config():
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic_demo.py"))
    cfg.model.encoder_attention = "enact:sigma=3"
    cfg.eval.attention = ("enact:sigma=3",)
    return cfg
