"""Write the demo's inputs: recipe DETR-DC5 weights as an official ``.pth`` and an example image.

    python -m detr_jax.demo_assets --output-dir work/demo
"""

from __future__ import annotations

import argparse
import os


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="work/demo")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    from detr_jax.data.examples import example_image
    image_path = os.path.join(args.output_dir, "example.jpg")
    example_image().save(image_path, quality=95)
    weights_path = os.path.join(args.output_dir, "detr-r50-dc5-recipe.pth")
    if not os.path.exists(weights_path):
        import torch
        from detr_jax.convert.recipe import recipe_state_dict
        state = {k: torch.from_numpy(v) for k, v in recipe_state_dict().items()}
        tmp = weights_path + ".tmp"
        torch.save({"model": state}, tmp)
        os.replace(tmp, weights_path)
    print(f"demo inputs: {weights_path} (recipe weights, official layout), {image_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
