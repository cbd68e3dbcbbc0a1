"""Every shipped config loads, and every attention setting in it parses."""

import glob
import os

import pytest

from detr_jax.attention.registry import parse_attention
from detr_jax.config_cli import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def test_configs_are_found():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_its_attention_settings_parse(path):
    cfg = load_config_file(path)
    settings = [cfg.model.encoder_attention]
    if "eval" in cfg and "attention" in cfg.eval:
        settings += list(cfg.eval.attention)
    if "mtkd" in cfg and cfg.mtkd.get("enabled", False):
        settings.append(cfg.mtkd.act)
    for setting in settings:
        spec = parse_attention(setting)
        assert spec.to_string().split(":")[0] == setting.split(":")[0]
