"""A tiny tracer writing a Chrome trace-event timeline (one process row per rank) when MPIPROP_TRACE is set."""
from __future__ import annotations

import atexit
import glob
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

TRACE_VARIABLE = "MPIPROP_TRACE"
COMPUTE_TRACK = "compute"
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")


class _NoSpan:
    """The span handed out while tracing is off: entering and leaving it does nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: Any) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Span:
    """A recorded interval: entered, left, and stored as one complete ("X") event."""

    def __init__(self, tracer: Tracer, name: str, track: str, args: dict[str, Any]):
        self.tracer, self.name, self.track, self.args = tracer, name, track, args
        self.start = 0.0

    def __enter__(self) -> _Span:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.tracer.record(self.name, self.start, time.perf_counter(), self.track, self.args)


class Tracer:
    """Collects complete events for one rank and writes them as a Chrome trace.

    Timestamps are wall-clock microseconds (a wall-clock anchor plus `perf_counter` offsets),
    so the ranks of one node line up. Each track ("compute", "bucket 0", "send", ...) is a
    thread row under the rank's process row; intervals on one track must nest.
    """

    def __init__(self, path: str | None = None):
        self.path: str | None = None
        self.events: list[dict[str, Any]] = []
        self.tracks: dict[str, int] = {COMPUTE_TRACK: 0}
        self.started_wall = time.time()
        self._perf_origin = time.perf_counter()
        self._exit_hook_registered = False
        if path:
            self.enable(path)

    @property
    def enabled(self) -> bool:
        """True while events are being recorded."""
        return self.path is not None

    def enable(self, path: str) -> None:
        """Record from now on; at exit write this rank's events, and the merged trace once all ranks have."""
        self.path = os.fspath(path)
        if not self._exit_hook_registered:
            atexit.register(self._write_at_exit)
            self._exit_hook_registered = True

    def disable(self) -> None:
        """Stop recording (already recorded events are kept until `clear`)."""
        self.path = None

    def clear(self) -> None:
        """Forget the recorded events."""
        self.events = []

    def span(self, name: str, track: str = COMPUTE_TRACK, **args: Any) -> _Span | _NoSpan:
        """A context manager recording `name` on `track` with `args` while tracing is on (a no-op otherwise)."""
        if self.path is None:
            return _NO_SPAN
        return _Span(self, name, track, args)

    def begin(self, name: str, track: str = COMPUTE_TRACK, **args: Any) -> tuple | None:
        """Start an interval that `end` closes (for intervals that do not fit a `with` block); None when off."""
        if self.path is None:
            return None
        return name, track, args, time.perf_counter()

    def end(self, token: tuple | None, **more_args: Any) -> None:
        """Close the interval `begin` returned, adding `more_args` to its arguments; nothing when `token` is None."""
        if token is None:
            return
        name, track, args, start = token
        self.record(name, start, time.perf_counter(), track, {**args, **more_args})

    def record(self, name: str, start: float, stop: float, track: str = COMPUTE_TRACK,
               args: dict[str, Any] | None = None) -> None:
        """Store one complete event from `perf_counter` readings `start` and `stop`."""
        tid = self.tracks.setdefault(track, len(self.tracks))
        event = {"name": name, "ph": "X", "ts": self._microseconds(start),
                 "dur": max(stop - start, 0.0) * 1e6, "tid": tid}
        if args:
            event["args"] = {key: _jsonable(value) for key, value in args.items()}
        self.events.append(event)

    def trace_events(self, rank: int) -> list[dict[str, Any]]:
        """This rank's events with `pid=rank`, led by the metadata naming its process and thread rows."""
        meta = [{"name": "process_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}},
                {"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0, "args": {"sort_index": rank}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": track}}
                 for track, tid in self.tracks.items()]
        return meta + [{**event, "pid": rank} for event in self.events]

    def write(self, rank: int | None = None, size: int | None = None) -> str | None:
        """Write this rank's file; merge all ranks' files into the trace path once they all exist.

        Args:
            rank: this process's rank (default: from MPI or the launcher's environment).
            size: number of ranks (same default).

        Returns:
            The merged trace's path when this call completed it, else None.
        """
        if self.path is None:
            return None
        rank = current_rank() if rank is None else rank
        size = world_size() if size is None else size
        _write_json_atomically(rank_file(self.path, rank), {"traceEvents": self.trace_events(rank)})
        return merge_rank_files(self.path, size, newer_than=self.started_wall - 1.0)

    def _microseconds(self, perf_reading: float) -> float:
        return (self.started_wall + (perf_reading - self._perf_origin)) * 1e6

    def _write_at_exit(self) -> None:
        try:
            self.write()
        except Exception as error:  # a failed trace must not turn a finished run into a failed one
            print(f"mpiprop: could not write the trace to {self.path}: {error}", file=sys.stderr)


def rank_file(path: str, rank: int) -> str:
    """Where rank `rank` writes its own events: "trace.json" -> "trace.rank3.json"."""
    stem, extension = os.path.splitext(path)
    return f"{stem}.rank{rank}{extension or '.json'}"


def merge_rank_files(path: str, size: int | None = None, newer_than: float = 0.0) -> str | None:
    """Merge the per-rank files of `path` into one Chrome trace at `path`.

    Args:
        path: the trace path given in MPIPROP_TRACE.
        size: ranks expected; merge only when files for ranks 0..size-1 all exist (None: whatever exists).
        newer_than: ignore files last written before this wall-clock time (left over from an earlier run).

    Returns:
        `path` when it was written, None when some rank's file is still missing.
    """
    files = _fresh_rank_files(path, newer_than)
    if size is not None:
        files = {rank: name for rank, name in files.items() if rank < size}
    if not files or (size is not None and any(rank not in files for rank in range(size))):
        return None
    events: list[dict[str, Any]] = []
    try:
        for rank in sorted(files):
            with open(files[rank]) as handle:
                events += json.load(handle)["traceEvents"]
    except (OSError, ValueError, KeyError):  # another rank is replacing a file right now; it will merge instead
        return None
    _write_json_atomically(path, {"traceEvents": events, "displayTimeUnit": "ms"})
    return path


def _fresh_rank_files(path: str, newer_than: float) -> dict[int, str]:
    stem, extension = os.path.splitext(path)
    pattern = re.compile(re.escape(stem) + r"\.rank(\d+)" + re.escape(extension or ".json") + "$")
    found = {}
    for candidate in glob.glob(glob.escape(stem) + ".rank*"):
        match = pattern.match(candidate)
        if match and os.path.getmtime(candidate) >= newer_than:
            found[int(match.group(1))] = candidate
    return found


def _write_json_atomically(path: str, content: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".trace-", suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(content, stream)
    os.replace(temporary, path)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def current_rank() -> int:
    """This process's rank in MPI_COMM_WORLD: from mpi4py if MPI is running, else the launcher's environment, or 0."""
    return _from_mpi("Get_rank", _RANK_VARIABLES, 0)


def world_size() -> int:
    """The number of ranks in the job (same sources as `current_rank`), 1 outside MPI."""
    return _from_mpi("Get_size", _SIZE_VARIABLES, 1)


def _from_mpi(method: str, variables: tuple[str, ...], default: int) -> int:
    mpi = sys.modules.get("mpi4py.MPI")  # never import it here: importing initialises MPI
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return getattr(mpi.COMM_WORLD, method)()
    for name in variables:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


tracer = Tracer(os.environ.get(TRACE_VARIABLE) or None)


def span(name: str, track: str = COMPUTE_TRACK, **args: Any) -> _Span | _NoSpan:
    """`with span("forward", micro_batch=3): ...` on the process-wide tracer (a no-op unless tracing)."""
    return tracer.span(name, track, **args)


def begin(name: str, track: str = COMPUTE_TRACK, **args: Any) -> tuple | None:
    """Start an interval on the process-wide tracer; pass the result to `end`."""
    return tracer.begin(name, track, **args)


def end(token: tuple | None, **more_args: Any) -> None:
    """Close an interval started by `begin`."""
    tracer.end(token, **more_args)
