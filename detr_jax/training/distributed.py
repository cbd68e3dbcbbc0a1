"""Multi-host set-up through ``jax.distributed``.

TPU pods and SLURM/Open MPI clusters set themselves up (``jax.distributed.initialize()``
with no arguments). GPU or CPU hosts elsewhere pass the coordinator address, process
count and process id as flags or as ``DETR_JAX_COORDINATOR``, ``DETR_JAX_NUM_PROCESSES``
and ``DETR_JAX_PROCESS_ID``. CPU processes use gloo collectives.
"""

from __future__ import annotations

import os

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
    """Initialize ``jax.distributed`` when several processes are requested (or ``auto``)."""
    coordinator = coordinator or os.environ.get("DETR_JAX_COORDINATOR")
    env_count = os.environ.get("DETR_JAX_NUM_PROCESSES")
    env_id = os.environ.get("DETR_JAX_PROCESS_ID")
    num_processes = num_processes if num_processes is not None else (int(env_count) if env_count else None)
    process_id = process_id if process_id is not None else (int(env_id) if env_id else None)
    if coordinator and num_processes and num_processes > 1:
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()
