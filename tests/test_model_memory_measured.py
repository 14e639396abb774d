"""The memory model against the memory report measured under `mpiexec -n 2` in each real layout."""
import json

import pytest

from mpi_launch import run_mpi
from mpiprop.launch.memory_model import ModelDescription, parse_parallel_layouts, rank_memory

WIDTHS = "64,512,512,512,16"  # two pairs of Linear layers for tensor parallelism, a lone last Linear
# Measured peaks also hold what a step allocates whatever the sizes (Python objects, MPI requests, tens of
# KiB) and, in a pipeline's later stage, however many messages of the next micro-batch have arrived: with
# micro-batches of 128 rows or more, activations are megabytes and these stay within the tolerances.
PEAK_TOLERANCE = 0.10
LATER_STAGE_PEAK_TOLERANCE = 0.25


def measured_reports(layout: str, ranks: int, batch: int, *options: str) -> list[dict]:
    """Every rank's memory report from `tests/mpi_scripts/model_memory.py` under `layout`."""
    result = run_mpi("model_memory.py", ranks, "--layout", layout, "--widths", WIDTHS, "--batch", str(batch),
                     *options)
    line = next(line for line in result.stdout.splitlines() if line.startswith("MODEL-MEMORY "))
    return json.loads(line[len("MODEL-MEMORY "):])


@pytest.mark.mpi
@pytest.mark.parametrize("layout, batch, options", [
    ("2x1", 512, []),
    ("2x1:zero1", 512, []),
    ("2x1:zero2", 512, ["--optimizer", "momentum"]),
    ("1x1x2", 256, []),
    ("1x2", 512, ["--micro-batches", "4"]),
    ("2x1", 512, ["--dtype", "float64", "--optimizer", "sgd", "--recompute"]),
    ("4x1:zero1", 1024, []),
    ("1x4", 1024, ["--micro-batches", "8"]),
    ("2x2", 1024, ["--micro-batches", "4"]),
    ("2x1x2", 1024, ["--micro-batches", "2"]),
    ("1x2x2", 1024, ["--micro-batches", "4"]),
], ids=["data", "zero1", "zero2-momentum", "tensor", "pipeline", "data-recompute-float64-sgd", "zero1-4-ranks",
        "pipeline-4-stages", "pipeline-grid", "data-x-tensor", "pipeline-x-tensor"])
def test_predicted_bytes_are_the_measured_ones(layout, batch, options):
    parsed = parse_parallel_layouts(layout)[0]
    measured = measured_reports(layout, parsed.ranks, batch, *options)
    flags = dict(zip(options[::2], options[1::2]))  # options with values first, --recompute last
    model = ModelDescription(tuple(int(width) for width in WIDTHS.split(",")), flags.get("--optimizer", "adam"),
                             flags.get("--dtype", "float32"), "--recompute" in options)
    predicted = rank_memory(model, parsed, batch, int(flags.get("--micro-batches", 1)))
    # one report per distinct rank: each stage of a pipeline, each ZeRO shard, else one for all ranks alike
    if parsed.stages > 1:
        per_rank = [predicted[found["stage"]] for found in measured]
    else:
        per_rank = predicted * (parsed.ranks // len(predicted))
    assert len(measured) == len(per_rank) == parsed.ranks
    for rank, (expected, found) in enumerate(zip(per_rank, measured)):
        assert (found["parameters"], found["gradients"], found["optimizer_state"]) == \
            (expected.parameters, expected.gradients, expected.optimizer_state), f"rank {rank}"
        tolerance = LATER_STAGE_PEAK_TOLERANCE if found["stage"] > 0 else PEAK_TOLERANCE
        assert found["peak_activations"] == pytest.approx(expected.peak_activations, rel=tolerance), f"rank {rank}"
