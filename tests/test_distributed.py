"""The multi-process start-up decision (detr_jax.distributed.decide) on fake environments:
nothing is initialized."""

import argparse

import pytest

from detr_jax.distributed import DistributedSetupError, add_flags, decide, detect_cluster, initialize


def plan(mode=None, coordinator=None, num=None, pid=None, tpu_vm=False, **environ):
    return decide(mode, coordinator, num, pid, environ=environ, tpu_vm=tpu_vm)


def test_single_process_by_default():
    assert plan().action == "single"
    assert plan(JAX_PLATFORMS="cpu", HOME="/root").action == "single"
    # one TPU host listed (a single-host slice under GKE) is not a pod
    assert plan(TPU_WORKER_HOSTNAMES="localhost").action == "single"


@pytest.mark.parametrize("environ", [
    dict(TPU_WORKER_HOSTNAMES="t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"),
    dict(TPU_PROCESS_ADDRESSES="10.0.0.1:8476,10.0.0.2:8476"),
    dict(MEGASCALE_COORDINATOR_ADDRESS="10.0.0.1", TPU_WORKER_HOSTNAMES="a"),
    dict(CLOUD_TPU_TASK_ID="3"),
    dict(SLURM_JOB_ID="77", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="2", SLURM_PROCID="1",
         SLURM_LOCALID="0"),
    dict(OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1:34911", OMPI_COMM_WORLD_SIZE="4"),
])
def test_auto_uses_cluster_detection(environ):
    p = plan(**environ)
    assert p.action == "cluster" and p.kwargs == {}, p


def test_tpu_vm_and_single_task_clusters():
    assert plan(tpu_vm=True).action == "cluster"
    assert "Cloud TPU VM" in plan(tpu_vm=True).reason
    assert decide(environ={}, tpu_vm=lambda: True).action == "cluster"
    one_task = dict(SLURM_JOB_ID="77", SLURM_STEP_NODELIST="n1", SLURM_NTASKS="1",
                    SLURM_PROCID="0", SLURM_LOCALID="0")
    assert plan(**one_task).action == "single"
    assert plan(OMPI_MCA_orte_hnp_uri="x", OMPI_COMM_WORLD_SIZE="1").action == "single"
    assert detect_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) is None  # incomplete


def test_off_wins_and_on_forces():
    assert plan("off", TPU_WORKER_HOSTNAMES="a,b").action == "single"
    assert plan("off", "h:1", 2, 0).action == "single"
    assert plan("on").action == "cluster"
    assert plan(DETR_JAX_DISTRIBUTED="off", CLOUD_TPU_TASK_ID="0").action == "single"
    assert plan(DETR_JAX_DISTRIBUTED="on").action == "cluster"
    with pytest.raises(DistributedSetupError, match="DETR_JAX_DISTRIBUTED"):
        plan(DETR_JAX_DISTRIBUTED="maybe")


def test_explicit_flags_and_environment():
    p = plan(None, "host0:1234", 2, 1)
    assert p.action == "explicit"
    assert p.kwargs == dict(coordinator_address="host0:1234", num_processes=2, process_id=1)
    p = plan(DETR_JAX_COORDINATOR="h:9", DETR_JAX_NUM_PROCESSES="4", DETR_JAX_PROCESS_ID="3")
    assert p.kwargs == dict(coordinator_address="h:9", num_processes=4, process_id=3)
    # flags override the variables
    p = plan(None, None, None, 0, DETR_JAX_COORDINATOR="h:9", DETR_JAX_NUM_PROCESSES="4",
             DETR_JAX_PROCESS_ID="3")
    assert p.kwargs["process_id"] == 0
    # explicit values beat cluster detection; one process needs no initialization
    assert plan(None, "h:1", 2, 0, TPU_WORKER_HOSTNAMES="a,b").action == "explicit"
    assert plan(None, "h:1", 1, 0).action == "single"


@pytest.mark.parametrize("args,match", [
    (("h:1", None, 0), "missing: --num-processes"),
    ((None, 2, 0), "missing: --coordinator-address"),
    (("h:1", 2, None), "missing: --process-id"),
    (("h:1", 2, 2), r"--process-id 2: must be in 0 .. 1"),
    (("h:1", 0, 0), "--num-processes 0"),
    (("host", 2, 0), "expected host:port"),
])
def test_clear_errors(args, match):
    with pytest.raises(DistributedSetupError, match=match):
        plan(None, *args)


def test_bad_variable():
    with pytest.raises(DistributedSetupError, match=r"\$DETR_JAX_NUM_PROCESSES='two'"):
        plan(DETR_JAX_COORDINATOR="h:1", DETR_JAX_NUM_PROCESSES="two")


def test_flags_and_aliases():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args([])
    assert (args.distributed, args.coordinator, args.log_all_processes) == (None, None, False)
    args = parser.parse_args(["--distributed", "--coordinator", "h:1", "--num-processes", "2",
                              "--process-id", "1"])
    assert (args.distributed, args.coordinator, args.num_processes) == ("on", "h:1", 2)
    assert parser.parse_args(["--coordinator-address", "x:2"]).coordinator == "x:2"
    assert parser.parse_args(["--distributed", "off"]).distributed == "off"


def test_single_process_initialize_is_a_no_op():
    import jax
    p = initialize(None, environ={})
    assert p.action == "single" and not jax.distributed.is_initialized()
