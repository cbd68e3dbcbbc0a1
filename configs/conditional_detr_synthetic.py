"""A Conditional DETR demo model on the synthetic benchmark, with the DETR demo's data,
backbone, sizes and training budget (configs/synthetic_demo.py), so the two train alike.

    python train.py --config configs/conditional_detr_synthetic.py --workdir runs/conditional_demo \\
        --config.train.init_backbone=runs/demo_backbone

Differences from the DETR demo are the detector's own: the conditional decoder, sigmoid
classes (index = category id) with the focal recipe (``detr_jax.training.focal``, loss
and matching 2 / 5 / 2) and a post-norm decoder (the official decoder is post-norm only).
The encoder is the DETR demo's pre-norm one (``pre_norm``; ``--config.model.pre_norm=False``
for the official post-norm encoder).
"""

import os

from detr_jax.config_cli import load_config_file
from detr_jax.models.conditional_detr import conditional_detr_config
from detr_jax.training.focal import focal_loss_config


def get_config():
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic_demo.py"))
    demo = cfg.model
    cfg.model = conditional_detr_config(
        backbone=demo.backbone.to_dict(), hidden_dim=demo.hidden_dim, num_heads=demo.num_heads,
        enc_layers=demo.enc_layers, dec_layers=demo.dec_layers, ffn_dim=demo.ffn_dim,
        dropout=demo.dropout, num_queries=demo.num_queries, num_classes=demo.num_classes,
        pre_norm=demo.pre_norm)
    cfg.loss = focal_loss_config()
    return cfg
