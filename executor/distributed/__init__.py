"""Multi-process SPD over torch.distributed (NCCL on GPUs, gloo on the CPU): one process per stage, the drafter
and verification on a controller (its own rank or co-located with stage 0), deadline-bounded communication."""

from executor.distributed.comm import DistributedError
from executor.distributed.launch import DistributedConfig, DistributedRun, ModelSource, run_distributed

__all__ = ["DistributedConfig", "DistributedError", "DistributedRun", "ModelSource", "run_distributed"]
