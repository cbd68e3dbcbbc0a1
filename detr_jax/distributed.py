"""Multi-process start-up through ``jax.distributed``, shared by ``train.py`` and ``eval.py``.

One flag style for both scripts (:func:`add_flags`):

* ``--distributed auto`` (default): call ``jax.distributed.initialize()`` when the run is
  one of several processes: coordinator flags or ``DETR_JAX_*`` variables given (then with
  those values), or a cluster that JAX sets itself up on (then with no arguments): a
  Cloud TPU pod or TPU VM, GKE/Megascale TPU slices, SLURM or Open MPI with more than one
  task. One process otherwise.
* ``--distributed on``: always initialize (explicit values if given, else JAX's cluster
  detection); ``--distributed off``: never (one process, even on a pod worker).
* ``--coordinator-address host:port`` (alias ``--coordinator``), ``--num-processes``,
  ``--process-id``: for GPU or CPU hosts that no cluster manager describes; defaults
  ``$DETR_JAX_COORDINATOR``, ``$DETR_JAX_NUM_PROCESSES``, ``$DETR_JAX_PROCESS_ID``.
  CPU processes use gloo collectives.

The decision (:func:`decide`) reads only the environment and flags: it neither starts
the JAX backend nor asks a metadata server, so it can be tested with fake environments.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import sys
from typing import Callable, Mapping

MODES = ("auto", "on", "off")

# Variables that name a multi-process TPU job (GKE / JobSet / Megascale / Borg-style tasks)
_TPU_LIST_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")
_TPU_PRESENT_VARS = ("MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")


class DistributedSetupError(RuntimeError):
    """The flags or the environment do not describe a usable multi-process run."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`initialize` does: ``action`` is ``"single"`` (no initialization),
    ``"explicit"`` (``jax.distributed.initialize`` with ``kwargs``) or ``"cluster"``
    (``jax.distributed.initialize()``, JAX's cluster detection); ``reason`` says why."""
    action: str
    reason: str
    kwargs: dict = dataclasses.field(default_factory=dict)


def add_flags(parser) -> None:
    """The multi-process flags of ``train.py`` and ``eval.py``."""
    group = parser.add_argument_group("multi-process runs (TPU pods, GPU/CPU hosts)")
    group.add_argument("--distributed", nargs="?", const="on", default=None, choices=MODES,
                       help="auto (default, $DETR_JAX_DISTRIBUTED): jax.distributed.initialize() "
                            "on TPU pods/VMs, SLURM or Open MPI jobs of several tasks, or when "
                            "--coordinator-address is given; on (also a bare --distributed): "
                            "always; off: one process")
    group.add_argument("--coordinator-address", "--coordinator", dest="coordinator", default=None,
                       help="host:port of process 0 (GPU or CPU hosts without a cluster "
                            "manager); default: $DETR_JAX_COORDINATOR")
    group.add_argument("--num-processes", type=int, default=None,
                       help="number of processes, with --coordinator-address; default: "
                            "$DETR_JAX_NUM_PROCESSES")
    group.add_argument("--process-id", type=int, default=None,
                       help="this process's index, 0 .. num-processes - 1 (process 0 writes "
                            "checkpoints, reports and logs); default: $DETR_JAX_PROCESS_ID")
    group.add_argument("--log-all-processes", action="store_true",
                       help="every process prints its log lines (default: process 0 only; the "
                            "others print warnings and errors)")


def _int_var(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"${name}={value!r} is not an integer") from None


def _count(value: str | None) -> int:
    return len([v for v in (value or "").split(",") if v.strip()])


def tpu_vm_present() -> bool:
    """A Cloud TPU VM: libtpu installed and TPU chips visible (``/dev/accel*`` or
    ``/dev/vfio/<n>``), checked without starting the TPU runtime."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def detect_cluster(environ: Mapping[str, str], tpu_vm: bool = False) -> str | None:
    """The multi-process cluster ``environ`` describes (a short description), or None.

    TPU: ``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` with several hosts,
    ``MEGASCALE_COORDINATOR_ADDRESS``, ``CLOUD_TPU_TASK_ID``, or a Cloud TPU VM (``tpu_vm``,
    whose worker list JAX reads from the metadata server); SLURM (the variables JAX's
    SLURM detection needs, ``SLURM_NTASKS`` > 1); Open MPI (``OMPI_MCA_orte_hnp_uri``,
    ``OMPI_COMM_WORLD_SIZE`` > 1)."""
    for name in _TPU_LIST_VARS:
        if _count(environ.get(name)) > 1:
            return f"TPU slice (${name} lists {_count(environ.get(name))} hosts)"
    for name in _TPU_PRESENT_VARS:
        if environ.get(name):
            return f"TPU job (${name} is set)"
    if tpu_vm:
        return "Cloud TPU VM"
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(name in environ for name in slurm) and (_int_var(environ, "SLURM_NTASKS") or 0) > 1:
        return f"SLURM job of {environ['SLURM_NTASKS']} tasks"
    if environ.get("OMPI_MCA_orte_hnp_uri") and (_int_var(environ, "OMPI_COMM_WORLD_SIZE") or 0) > 1:
        return f"Open MPI job of {environ['OMPI_COMM_WORLD_SIZE']} processes"
    return None


def decide(mode: str | None = None, coordinator: str | None = None,
           num_processes: int | None = None, process_id: int | None = None, *,
           environ: Mapping[str, str] | None = None,
           tpu_vm: bool | Callable[[], bool] = tpu_vm_present) -> Plan:
    """The :class:`Plan` for the flags (None: their ``DETR_JAX_*`` variable) and the
    environment, without initializing anything."""
    environ = os.environ if environ is None else environ
    mode = mode or environ.get("DETR_JAX_DISTRIBUTED", "").strip() or "auto"
    if mode not in MODES:
        raise DistributedSetupError(f"--distributed / $DETR_JAX_DISTRIBUTED: {mode!r} is not one "
                                    f"of {', '.join(MODES)}")
    coordinator = coordinator or environ.get("DETR_JAX_COORDINATOR", "").strip() or None
    if num_processes is None:
        num_processes = _int_var(environ, "DETR_JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _int_var(environ, "DETR_JAX_PROCESS_ID")
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if mode == "off":
        return Plan("single", "--distributed off" + (" (coordinator settings ignored)"
                                                     if explicit else ""))
    if explicit:
        missing = [flag for flag, value in (("--coordinator-address", coordinator),
                                            ("--num-processes", num_processes),
                                            ("--process-id", process_id)) if value is None]
        if missing:
            raise DistributedSetupError(
                "a multi-process run needs --coordinator-address, --num-processes and "
                f"--process-id (or $DETR_JAX_COORDINATOR, $DETR_JAX_NUM_PROCESSES, "
                f"$DETR_JAX_PROCESS_ID); missing: {', '.join(missing)}")
        if num_processes < 1:
            raise DistributedSetupError(f"--num-processes {num_processes}: must be at least 1")
        if not 0 <= process_id < num_processes:
            raise DistributedSetupError(f"--process-id {process_id}: must be in 0 .. "
                                        f"{num_processes - 1} (--num-processes {num_processes})")
        if ":" not in coordinator:
            raise DistributedSetupError(f"--coordinator-address {coordinator!r}: expected host:port")
        if num_processes == 1 and mode == "auto":
            return Plan("single", "--num-processes 1")
        return Plan("explicit", f"process {process_id} of {num_processes}, coordinator "
                                f"{coordinator}",
                    dict(coordinator_address=coordinator, num_processes=num_processes,
                         process_id=process_id))
    cluster = detect_cluster(environ, tpu_vm() if callable(tpu_vm) else bool(tpu_vm))
    if cluster:
        return Plan("cluster", f"{cluster}: JAX's cluster detection")
    if mode == "on":
        return Plan("cluster", "--distributed on: JAX's cluster detection")
    return Plan("single", "no cluster or coordinator found")


def initialize(mode: str | None = None, coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None, *,
               log_all_processes: bool = False, environ: Mapping[str, str] | None = None) -> Plan:
    """Carry out :func:`decide`'s plan; print it once (process 0) and, unless
    ``log_all_processes``, keep the log lines and prints of the other processes to
    warnings and errors. Raises :class:`DistributedSetupError` with the reason on failure."""
    import jax
    plan = decide(mode, coordinator, num_processes, process_id, environ=environ)
    if plan.action != "single":
        if jax.distributed.is_initialized():
            plan = Plan("single", "jax.distributed was already initialized")
        else:
            environ = os.environ if environ is None else environ
            if environ.get("JAX_PLATFORMS", "") == "cpu":
                jax.config.update("jax_cpu_collectives_implementation", "gloo")
            try:
                jax.distributed.initialize(**plan.kwargs)
            except (RuntimeError, ValueError) as err:
                hint = ("" if plan.action == "explicit" else
                        "; outside a TPU pod, SLURM or Open MPI give --coordinator-address, "
                        "--num-processes and --process-id, or --distributed off")
                raise DistributedSetupError(f"jax.distributed.initialize() failed ({plan.reason}): "
                                            f"{type(err).__name__}: {err}{hint}") from err
    if plan.action != "single":
        if jax.process_index() == 0:
            print(f"distributed: {jax.process_count()} processes, {jax.device_count()} devices "
                  f"({plan.reason})", flush=True)
        if not log_all_processes and jax.process_index() != 0:
            quiet_this_process()
    return plan


def quiet_this_process() -> None:
    """Log warnings and errors only, and drop what this process prints to stdout."""
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    sys.stdout = open(os.devnull, "w")


def initialize_from_args(args) -> Plan:
    """:func:`initialize` with the flags of :func:`add_flags`."""
    return initialize(args.distributed, args.coordinator, args.num_processes, args.process_id,
                      log_all_processes=args.log_all_processes)


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process has reached the barrier ``name`` (unique per run).

    Uses the coordination service of ``jax.distributed`` (a host-side RPC with its own
    timeout), not a device collective: the first collective of a group of CPU processes
    (gloo) gives up after about 30 s when a peer is still compiling or loading, and a
    barrier placed before it lets them all start it together. One process: returns at once.
    """
    import jax
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost
    # processes given: orbax waits at the coordination service's barrier (with None it
    # would run a device collective, the thing this barrier is there to protect)
    multihost.sync_global_processes(name, timeout=timeout_s,
                                    processes=set(range(jax.process_count())))
