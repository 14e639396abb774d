"""Pipeline parallelism: partitioning, schedules, stages and the 2-D grid."""
