"""Reliability and tracing: abort, orphan guard, departures, stalls, signals, /dev/shm cleanup, checks, timeline."""
from mpiprop.distributed.reliability.timeline import merge_rank_files, rank_file

__all__ = ["merge_rank_files", "rank_file"]
