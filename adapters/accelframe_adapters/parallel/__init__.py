"""Pipeline parallelism over torch.distributed ranks: partition, schedule, stages, links, runtime
and the launcher (``python -m accelframe_adapters.parallel``)."""
