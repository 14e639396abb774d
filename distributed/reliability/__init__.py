"""Reliability and tracing: abort on error, orphan guard, stall watchdog, consistency checks, timeline."""
