"""MTKD fine-tuning of the bundled demo model (ACT paper Section 3.3 schedule, scaled).

    python train.py --config configs/mtkd_demo.py --workdir runs/mtkd_demo
    python eval.py --checkpoint runs/mtkd_demo/model --config configs/mtkd_demo.py \\
        --annotations data/synthetic/annotations/instances_val.json --image-root data/synthetic/val

Same data and evaluation as configs/synthetic_demo.py; starts from models/demo; AdamW at
1e-5 for 5 epochs and 1e-6 for 2 more (the paper's schedule); loss = DETR loss of the exact
branch + L2 box distillation of the ACT branch (weight 1); the ACT branch uses L = 20
rounds at the demo model's bucket width r = 4 (configs/synthetic_demo.py says why).
"""

import os

from detr_jax.config_cli import load_config_file


def get_config():
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic_demo.py"))
    cfg.train.update(init_checkpoint="models/demo", lr=1e-5, lr_backbone=1e-5, epochs=7,
                     lr_drop_epochs=(5,), eval_every=0, checkpoint_every=250)
    cfg.mtkd = dict(enabled=True, act="act:L=20,r=4", kd_weight=1.0, kd_aux=False, act_loss=False,
                    kd_distance="squared", kd_normalize="queries", kd_queries="all")
    return cfg
