"""The machine-readable line a scaling workload prints: `MPIPROP_THROUGHPUT samples_per_s=... key=value ...`."""
from __future__ import annotations

THROUGHPUT_TAG = "MPIPROP_THROUGHPUT"
SCALE_MODE_VARIABLE = "MPIPROP_SCALE_MODE"  # "strong" or "weak", set by `mpiprop scale` for the workload to read
# "1" when `mpiprop scale` asks for the workload's no-communication variant: every rank trains alone, no gradient
# allreduce; a workload that honours it puts `communication=0` on its line
NO_COMMUNICATION_VARIABLE = "MPIPROP_SCALE_NO_COMMUNICATION"


def format_throughput_line(samples_per_s: float, **values: float) -> str:
    """The line a workload prints (from one rank) so `mpiprop scale` can read its throughput.

    Args:
        samples_per_s: training samples processed per second over all ranks.
        values: optional extras (e.g. step_s, global_batch, compute_s_per_sample, parameter_bytes,
            activation_bytes_per_sample: the last three let `--predict` model this workload;
            communication=0 says the run honoured $MPIPROP_SCALE_NO_COMMUNICATION).
    """
    fields = {"samples_per_s": samples_per_s, **values}
    return THROUGHPUT_TAG + " " + " ".join(f"{key}={value:.10g}" for key, value in fields.items())


def parse_throughput_line(output: str) -> dict[str, float]:
    """The values on the last `MPIPROP_THROUGHPUT` line of a workload's output.

    Raises:
        ValueError: when no such line is present or it has no `samples_per_s`, or a value is not a number.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith(THROUGHPUT_TAG)]
    if not lines:
        raise ValueError(f"the workload printed no `{THROUGHPUT_TAG} samples_per_s=<number>` line; make one rank "
                         "print it (see mpiprop.launch.throughput.format_throughput_line)")
    values = {}
    for field in lines[-1][len(THROUGHPUT_TAG):].split():
        key, _, text = field.partition("=")
        try:
            values[key] = float(text)
        except ValueError:
            raise ValueError(f"{THROUGHPUT_TAG} value {field!r} is not key=<number>") from None
    if "samples_per_s" not in values:
        raise ValueError(f"the {THROUGHPUT_TAG} line {lines[-1]!r} has no samples_per_s=<number>")
    return values


def ran_without_communication(values: dict[str, float]) -> bool:
    """Whether a run's throughput values say it was the workload's no-communication variant (`communication=0`)."""
    return values.get("communication") == 0
