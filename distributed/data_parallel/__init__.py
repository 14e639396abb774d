"""Data parallelism: gradient buckets and their allreduce over the ranks."""
