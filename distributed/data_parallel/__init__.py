"""Data parallelism: gradient buckets and their allreduce over the ranks."""
from mpiprop.distributed.data_parallel.bucket_reduce_scatter import IN_FLIGHT
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB, bucket_lengths
from mpiprop.distributed.data_parallel.parameter_shards import rank_counts, shard_owners

__all__ = ["DEFAULT_BUCKET_CAP_MB", "IN_FLIGHT", "bucket_lengths", "rank_counts", "shard_owners"]
