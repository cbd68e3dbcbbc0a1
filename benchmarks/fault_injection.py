"""Fault injection: kill a tiny training at random moments and check every resume.

    JAX_PLATFORMS=cpu python benchmarks/fault_injection.py --trials 20 --steps 6 \
        --out fault_injection.json

What it does:

1. Writes a small synthetic COCO-format dataset (``detr_jax.data.synthetic``) and trains
   ``configs/tiny_train.py`` for ``--steps`` steps without interruption (the reference),
   with a checkpoint after every step; then once more (compiled programs now come from
   the cache), timing when the first step finishes and when the run ends.
2. For each of ``--trials`` trials, in a fresh work directory: starts the same training
   (``train.py`` in its own process group) and sends it SIGKILL at a random moment: a
   step k drawn uniformly from 0..steps, then a delay drawn uniformly between 0 and the
   run's last interval between progress lines after the line of step k (for k = 0 a
   moment before the first step),
   so kills land during steps, checkpoint saves, metric writes and the final model's
   export,
   then runs ``train.py`` again to completion. The rerun must take over the dead run's
   workdir lock, resume from the newest complete checkpoint, and end with parameters
   equal to the reference's (compared exactly; ``allclose`` with rtol 1e-6 is reported as
   well) and a ``metrics.jsonl`` holding each step once.

Prints one line per trial and a summary, and writes the results as JSON (``--out``).
Exit status 0 when every trial resumed to the reference's parameters. Everything runs on
CPU (a 2-layer tiny model on 64-128 px images); the persistent compilation cache in the
temporary directory makes the runs after the first start without recompiling, so a trial
costs two process starts and a few steps (about a minute on an idle 2-core machine, several
when the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(data: str, workdir: str, steps: int, cache: str) -> list[str]:
    return [sys.executable, "train.py", "--config", "configs/tiny_train.py", "--workdir", workdir,
            f"--config.data.train_annotations={data}/annotations/instances_train.json",
            f"--config.data.train_images={data}/train", f"--config.train.num_steps={steps}",
            "--config.train.checkpoint_every=1", "--config.train.keep=2",
            f"--config.train.compilation_cache={cache}", "--no-progress"]


def env() -> dict:
    return dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
                PYTHONUNBUFFERED="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_to_end(cmd: list[str], timeout: float) -> tuple[str, float, float | None]:
    """Run ``cmd`` to completion: (output, seconds, seconds until the first step line)."""
    start = time.perf_counter()
    first = None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if first is None and line.startswith("step "):
            first = time.perf_counter() - start
    proc.wait(timeout=timeout)
    output = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return output, time.perf_counter() - start, first


def kill_at(cmd: list[str], after_step: int, fraction: float, before_first: float
            ) -> tuple[str, bool, float]:
    """Start ``cmd`` in its own process group and SIGKILL the group at a chosen moment:
    ``before_first`` seconds after the start when ``after_step`` is 0, else ``fraction``
    (0..1) of this run's last step interval after it printed the line of step
    ``after_step``. Returns (output, whether it was still running, delay used)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, times, reached = [], [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step "):
                times.append(time.perf_counter())
            if line.startswith(f"step {after_step}/"):
                reached.set()
        reached.set()  # the process ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    delay = before_first
    if after_step > 0:
        reached.wait()
        gap = times[-1] - times[-2] if len(times) >= 2 else before_first / 10
        delay = fraction * gap
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    reader.join(timeout=10)
    return "".join(lines), killed, delay


def model_arrays(path: str) -> dict:
    import numpy as np
    from flax import nnx

    from detr_jax.checkpoint import load_model
    model = load_model(path)
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model))}


def compare(reference: dict, other: dict) -> dict:
    import numpy as np
    exact = all(np.array_equal(reference[k], other[k]) for k in reference)
    close = all(np.allclose(reference[k], other[k], rtol=1e-6, atol=1e-7) for k in reference)
    worst = max(float(np.max(np.abs(reference[k].astype(np.float64) - other[k])))
                if reference[k].size else 0.0 for k in reference)
    return {"exact": exact, "close": close, "max_abs_diff": worst}


def metric_steps(workdir: str) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if "eval" not in line]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="kills (one resume each)")
    parser.add_argument("--steps", type=int, default=6, help="training steps of each run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--keep", default=None, help="keep the work directories here")
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from detr_jax.data.synthetic import generate_split

    base = args.keep or tempfile.mkdtemp(prefix="fault_injection-")
    os.makedirs(base, exist_ok=True)
    data, cache = os.path.join(base, "data"), os.path.join(base, "jax_cache")
    generate_split(data, "train", 16, seed=0)
    reference_dir = os.path.join(base, "reference")
    warm_dir = os.path.join(base, "reference_warm")
    timings_file = os.path.join(base, "timings.json")
    if os.path.exists(timings_file):  # --keep of an earlier invocation: reuse its references
        with open(timings_file) as f:
            cold, total, first = json.load(f)
    else:
        _, cold, _ = run_to_end(train_command(data, reference_dir, args.steps, cache), 3600)
        # a second uninterrupted run, now with compiled programs in the cache: the timings
        # the kill moments are drawn from, and a check that two runs agree at all
        _, total, first = run_to_end(train_command(data, warm_dir, args.steps, cache), 3600)
        first = first or 0.0
        with open(timings_file, "w") as f:
            json.dump([cold, total, first], f)
    reference = model_arrays(os.path.join(reference_dir, "model"))
    repeat = compare(reference, model_arrays(os.path.join(warm_dir, "model")))
    print(f"reference: {args.steps} steps in {cold:.1f} s (compiling), again in {total:.1f} s "
          f"(first step after {first:.1f} s): {'identical' if repeat['exact'] else repeat}",
          flush=True)
    rng = random.Random(args.seed)
    trials = []
    for trial in range(args.trials):
        workdir = os.path.join(base, f"trial{trial:03d}")
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = train_command(data, workdir, args.steps, cache)
        # after the line of step k (0: from the start), at a random moment of the next step
        # or, for k = steps, of the final model's export
        after_step = rng.randint(0, args.steps)
        _, killed, delay = kill_at(cmd, after_step, rng.random(), rng.uniform(0.5 * first, first))
        checkpoints = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                             if s.isdigit()) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
        output, _, _ = run_to_end(cmd, 900)
        resumed = next((int(line.split()[3]) for line in output.splitlines()
                        if line.startswith("resumed from step ")), 0)
        result = compare(reference, model_arrays(os.path.join(workdir, "model")))
        steps = metric_steps(workdir)
        result.update(trial=trial, kill_after_step_line=after_step, kill_delay_s=round(delay, 2), killed_while_running=killed,
                      checkpoints_at_kill=checkpoints, resumed_from=resumed,
                      metrics_once_per_step=steps == list(range(1, args.steps + 1)))
        result["ok"] = result["close"] and result["metrics_once_per_step"]
        trials.append(result)
        print(f"trial {trial + 1}/{args.trials}: killed {delay:.1f} s after "
              f"{'the start' if after_step == 0 else f'the line of step {after_step}'} "
              f"({'running' if killed else 'had finished'}), checkpoints {checkpoints}, resumed "
              f"from step {resumed}: parameters {'identical' if result['exact'] else 'close' if result['close'] else 'DIFFERENT'} "
              f"(max |diff| {result['max_abs_diff']:.1e}), metrics once per step "
              f"{result['metrics_once_per_step']}", flush=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {"repeat_identical": repeat["exact"], "trials": len(trials), "killed_while_running": sum(t["killed_while_running"] for t in trials),
               "ok": sum(t["ok"] for t in trials), "exact": sum(t["exact"] for t in trials),
               "steps": args.steps, "reference_seconds": round(cold, 1), "warm_seconds": round(total, 1), "results": trials}
    print(f"{summary['ok']}/{summary['trials']} resumes ended with the reference's parameters "
          f"({summary['exact']} bit for bit); {summary['killed_while_running']} kills hit a "
          "running training")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["ok"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
