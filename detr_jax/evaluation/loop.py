"""The evaluation loop: per data round, predictions of every encoder-attention setting.

Per batch, the backbone runs once (``Detector.backbone_features``); then, for each setting,
the encoder and decoder of that setting's model (``with_encoder_attention``: same arrays)
and the detector's official post-processing (``Detector.postprocess``). Functions are
compiled ahead of time per input shape (one executable per bucket shape, and per device
in the per-device layout), so compiles are counted, timed, kept out of the time per
image, and their XLA memory analysis is known.

Every call gets the same explicit PRNG key, the encoder key of ``model(..., rng=key(seed))``
(``detr_jax.models.detector.encoder_key``), so ACT / K-means draws are deterministic and
a prediction here equals the model called with ``rng=jax.random.key(seed)`` on the same
padded batch.

Hash draws (``hash_seeds`` N > 1): a setting whose spec has ``random_draws`` (ACT,
K-means) runs N times per batch, each a *run* named ``draw_name(setting, i)`` with the key
``draw_key(seed, i)`` (draw 0: the key above). The draws share the backbone pass and the
setting's compiled head (the key is a runtime argument); other settings run once.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.data.pipeline import Layout, host_rows, to_device
from detr_jax.evaluation.layer_stats import read_layer_stats
from detr_jax.models.detector import encoder_key
from detr_jax.precision import config_matmul_precision, effective_matmul_precision
from detr_jax.sharding import replicate


def _tree_signature(tree) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None))
                 for x in jax.tree.leaves(tree))


# Compiled executables per model (weakly held), shared by every evaluation of that model
# in this process: key (setting or "backbone", argument shapes, dtypes and shardings).
_EXECUTABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _memory_bytes(compiled) -> int | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def stack_cluster_stats(stats) -> dict:
    """Per-layer statistics of a batch -> ``num_clusters`` (B, L, H), ``num_valid`` (B, L)
    and, when every layer reports it, ``capacity`` (L,); {} unless every layer clusters."""
    layers = [read_layer_stats(s) for s in (stats or [])]
    if not layers or any(layer is None for layer in layers):
        return {}
    out = {"num_clusters": jnp.stack([nc for nc, _, _ in layers], 1),
           "num_valid": jnp.stack([jnp.broadcast_to(nv, nc.shape[:1]) for nc, nv, _ in layers], 1)}
    if all(cap is not None for _, _, cap in layers):
        out["capacity"] = jnp.stack([jnp.asarray(cap) for _, _, cap in layers])
    return out


def draw_key(seed: int, draw: int) -> jax.Array:
    """The encoder key of hash draw ``draw``: ``encoder_key(key(seed))`` for draw 0 (the
    single-draw key), ``encoder_key(fold_in(key(seed), draw))`` for the others."""
    base = jax.random.key(seed)
    return encoder_key(base if draw == 0 else jax.random.fold_in(base, draw))


def draw_name(setting: str, draw: int) -> str:
    """The run name of draw ``draw`` of a setting evaluated over several hash draws."""
    return f"{setting}#draw{draw}"


def setting_runs(settings, hash_seeds: int = 1) -> dict[str, list[tuple[str, int]]]:
    """setting -> [(run name, draw)]: ``hash_seeds`` draws (``draw_name``) for settings
    whose spec has ``random_draws`` when ``hash_seeds > 1``, else one run named as the
    setting (draw 0)."""
    from detr_jax.attention import parse_attention
    if int(hash_seeds) < 1:
        raise ValueError(f"hash_seeds={hash_seeds!r}: expected a positive integer")
    runs = {}
    for setting in settings:
        if hash_seeds > 1 and parse_attention(setting).random_draws:
            runs[setting] = [(draw_name(setting, i), i) for i in range(int(hash_seeds))]
        else:
            runs[setting] = [(setting, 0)]
    return runs


class SettingsRunner:
    """Compiled backbone shared by several encoder-attention settings of one detector.

    ``hash_seeds``: hash draws per setting with ``random_draws`` (module docstring);
    ``runs`` maps each setting to its (run name, draw) pairs and ``run_names`` lists every
    run; outputs and head times are keyed by run name.
    """

    def __init__(self, model, settings, layout: Layout, *, seed: int = 0, hash_seeds: int = 1):
        from detr_jax.attention import parse_attention
        from detr_jax.models.build import with_encoder_attention
        from detr_jax.models.inference import inference_model

        self.settings = list(settings)
        self.runs = setting_runs(self.settings, hash_seeds)
        self.run_names = [name for s in self.settings for name, _ in self.runs[s]]
        self.layout = layout
        # inference copies: frozen BatchNorms folded into the convolutions once; the
        # state travels as its flat list of arrays (flattened in C++, see Forward)
        base = inference_model(model)
        base_graphdef, state = nnx.split(base)
        state, treedef = jax.tree.flatten(state)
        self.matmul_precision = config_matmul_precision(model.config)
        self.graphdefs = {}
        for setting in self.settings:
            spec = parse_attention(setting)
            variant = (base if spec == model.attention_spec
                       else inference_model(with_encoder_attention(model, spec)))
            self.graphdefs[setting] = nnx.split(variant)[0]
        # One encoder key per draw, the same for every batch. Keys travel as raw key data
        # (a plain uint32 array) and are wrapped inside the jit.
        draws = sorted({d for runs in self.runs.values() for _, d in runs})
        self.encoder_key = draw_key(seed, 0)
        key_data = {d: np.asarray(jax.random.key_data(draw_key(seed, d))) for d in draws}
        if layout.mode == "sharded":
            from jax.sharding import NamedSharding, PartitionSpec
            replicated = NamedSharding(layout.mesh, PartitionSpec())
            self.states = [replicate(state, replicated)]
            self.keys = {d: [replicate(k, replicated)] for d, k in key_data.items()}
            head_out = replicated
        else:
            self.states = [jax.device_put(state, d) for d in layout.devices]
            self.keys = {d: [jax.device_put(k, dev) for dev in layout.devices]
                         for d, k in key_data.items()}
            head_out = None

        def backbone(state, pixel_values, padding_mask):
            module = nnx.merge(base_graphdef, jax.tree.unflatten(treedef, state))
            return module.backbone_features(pixel_values, padding_mask)

        def make_head(graphdef):
            def head(state, features, mask, pos, key_data, original_sizes):
                module = nnx.merge(graphdef, jax.tree.unflatten(treedef, state))
                memory, stats = module.encode(features, mask, pos,
                                              rng=jax.random.wrap_key_data(key_data))
                scores, labels, boxes = module.postprocess(module.decode(memory, mask, pos),
                                                           original_sizes)
                return {"scores": scores, "labels": labels, "boxes": boxes,
                        **stack_cluster_stats(stats)}
            return head

        self._backbone = jax.jit(backbone)
        self._heads = {s: jax.jit(make_head(self.graphdefs[s]), out_shardings=head_out)
                       for s in self.settings}
        self._executables = _EXECUTABLES.setdefault(model, {})
        self.memory = {"backbone": None, **{s: None for s in self.settings}}
        self._measured = set()
        self.compiles = 0
        self.compile_seconds = 0.0

    def _executable(self, name, function, args):
        state_sharding = getattr(jax.tree.leaves(args[0])[0], "sharding", None)
        # the matmul precision is in the graph definitions' model config; it is in the key
        # too, so a config changed in place never reuses a program compiled for another
        precision = effective_matmul_precision({"matmul_precision": self.matmul_precision})
        key = (name, precision, state_sharding, _tree_signature(args[1:]))
        fresh = key not in self._executables
        if fresh:
            start = time.perf_counter()
            compiled = function.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
            self.compiles += 1
            self._executables[key] = compiled
        compiled = self._executables[key]
        if (name, key) not in self._measured:
            self._measured.add((name, key))
            used = _memory_bytes(compiled)
            if used is not None:
                self.memory[name] = max(self.memory[name] or 0, used)
        return compiled, fresh

    def run_round(self, items):
        """Run device batches together (one per device in the per-device layout).

        items: [(slot, (pixel_values, padding_mask, original_sizes))].
        Returns (outputs {run name: [numpy dict per item]}, backbone seconds,
        {run name: head seconds}, whether anything was compiled); a run name is the
        setting unless it runs several hash draws (``runs``).
        """
        compiled_any = False
        start = time.perf_counter()
        features = []
        for slot, (pixels, mask, _) in items:
            args = (self.states[slot], pixels, mask)
            exe, fresh = self._executable("backbone", self._backbone, args)
            compiled_any |= fresh
            features.append(exe(*args))
        jax.block_until_ready(features)
        backbone_seconds = time.perf_counter() - start
        outputs, head_seconds = {}, {}
        for setting in self.settings:
            for run, draw in self.runs[setting]:
                start = time.perf_counter()
                results = []
                for (slot, (_, _, sizes)), feats in zip(items, features):
                    args = (self.states[slot], *feats, self.keys[draw][slot], sizes)
                    exe, fresh = self._executable(setting, self._heads[setting], args)
                    compiled_any |= fresh
                    results.append(exe(*args))
                jax.block_until_ready(results)
                head_seconds[run] = time.perf_counter() - start
                outputs[run] = [{k: np.asarray(v) for k, v in r.items()} for r in results]
        return outputs, backbone_seconds, head_seconds, compiled_any


@dataclasses.dataclass
class ImagePrediction:
    """One image's predictions under one setting (numpy)."""

    image_id: int
    index: int                  # dataset index
    input_hw: tuple             # padded (H, W) of its batch
    valid_hw: tuple             # resized, unpadded (H, W)
    output: dict                # "scores" (Q,), "labels" (Q,), "boxes" (Q, 4) and, for
                                # clustered settings, "num_clusters" (L, H), "num_valid" (L,),
                                # "capacity" (L,) (shared by the batch)


@dataclasses.dataclass
class Round:
    """What one round of the loop produced: host batches (one per local device in the
    per-device layout), the predictions of those that ran, and the round's timing."""

    batches: list               # every host batch of the round
    ran: list                   # the batches that ran (all but those without real images)
    outputs: dict               # run (setting or hash draw) -> [numpy output dict per batch of ``ran``]
    seconds: dict               # run -> backbone + head seconds of the round
    rows: int                   # images the round's time covers (the global batch if sharded)
    compiled: bool              # whether anything was compiled during the round
    local_rows: list | None     # sharded layout: this host's rows of the global outputs

    def skipped(self) -> list[dict]:
        """{"index", "image_id", "path", "reason"} of the images that failed to decode."""
        return [{"index": i, "image_id": image_id, "path": path, "reason": reason}
                for batch in self.batches for i, image_id, path, reason in batch.skipped]

    def images(self, setting) -> Iterator[ImagePrediction]:
        """The real images of the round with their predictions under ``setting``."""
        for batch, out in zip(self.ran, self.outputs.get(setting, [])):
            for r, image_id in enumerate(batch.image_ids):
                if image_id < 0:
                    continue
                g = self.local_rows[r] if self.local_rows is not None else r
                row = {k: v[g] for k, v in out.items() if k != "capacity"}
                if "capacity" in out:
                    row["capacity"] = out["capacity"]
                yield ImagePrediction(
                    image_id=int(image_id), index=int(batch.indices[r]),
                    input_hw=tuple(int(v) for v in batch.pixel_values.shape[1:3]),
                    valid_hw=tuple(int(v) for v in batch.image_sizes[r]), output=row)


def predict_rounds(runner: SettingsRunner, batches, layout: Layout,
                   batch_size: int) -> Iterator[Round]:
    """Group host batches into rounds (one batch per local device, or one global batch
    when sharded), run them and yield each :class:`Round`."""
    per_round = 1 if layout.mode == "sharded" else layout.num_devices
    local_rows = host_rows(layout, batch_size) if layout.mode == "sharded" else None
    pending = []
    for batch in batches:
        pending.append(batch)
        if len(pending) == per_round:
            yield _run(runner, pending, layout, batch_size, local_rows)
            pending = []
    if pending:
        yield _run(runner, pending, layout, batch_size, local_rows)


def _run(runner, round_batches, layout, batch_size, local_rows) -> Round:
    sharded = layout.mode == "sharded"
    ran = [b for b in round_batches if sharded or b.num_real > 0]
    if not ran:
        return Round(round_batches, [], {}, {}, 0, False, local_rows)
    items = [(b.step.device, to_device(b, layout, batch_size)) for b in ran]
    outputs, backbone_s, head_s, compiled = runner.run_round(items)
    rows = batch_size if sharded else sum(b.pixel_values.shape[0] for b in ran)
    seconds = {run: backbone_s + head_s[run] for run in runner.run_names}
    return Round(round_batches, ran, outputs, seconds, rows, compiled, local_rows)
