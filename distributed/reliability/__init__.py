"""Reliability and tracing: abort, orphan guard, departures, stalls, signals, /dev/shm cleanup, checks, timeline."""
