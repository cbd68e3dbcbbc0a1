"""An Anchor DETR demo model on the synthetic benchmark, with the DETR demo's data,
backbone, sizes and training budget (configs/synthetic_demo.py), so the three train alike.

    python train.py --config configs/anchor_detr_synthetic.py --workdir runs/anchor_demo \\
        --config.train.init_backbone=runs/demo_backbone

Differences from the DETR demo are the detector's own: RCDA encoder and cross-attention,
10 anchor points x 2 patterns = 20 queries (the demo's 20), sigmoid classes (index =
category id) with the focal recipe (``detr_jax.training.focal``), dropout 0 as the
official recipe. Only exact attention applies to the RCDA encoder.
"""

import os

from detr_jax.config_cli import load_config_file
from detr_jax.models.anchor_detr import anchor_detr_config
from detr_jax.training.focal import focal_loss_config


def get_config():
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic_demo.py"))
    demo = cfg.model
    cfg.model = anchor_detr_config(
        backbone=demo.backbone.to_dict(), hidden_dim=demo.hidden_dim, num_heads=demo.num_heads,
        enc_layers=demo.enc_layers, dec_layers=demo.dec_layers, ffn_dim=demo.ffn_dim,
        dropout=0.0, num_query_position=10, num_query_pattern=2, num_classes=demo.num_classes)
    cfg.loss = focal_loss_config()
    cfg.eval.attention = ("exact",)
    return cfg
