"""Pipeline parallelism: partitioning, schedules, stages and the 2-D grid."""
from mpiprop.distributed.pipeline.partition import balance_costs
from mpiprop.distributed.pipeline.schedule_registry import schedule_spec
from mpiprop.distributed.pipeline.stage import RECEIVE_AHEAD

__all__ = ["RECEIVE_AHEAD", "balance_costs", "schedule_spec"]
