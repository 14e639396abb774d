"""Memory per rank of an MLP under a layout, by arithmetic: parameters, gradients, optimizer state, activations."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel import DEFAULT_BUCKET_CAP_MB, IN_FLIGHT, bucket_lengths, rank_counts, shard_owners
from mpiprop.distributed.pipeline import RECEIVE_AHEAD, balance_costs
from mpiprop.network.training.memory_report import MemoryReport

OPTIMIZER_STATE_COPIES = {"sgd": 0, "momentum": 1, "adam": 2}
DTYPE_BYTES = {"float32": 4, "float64": 8}
BYTE_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
LAYOUT_PATTERN = re.compile(r"^(\d+)(?:x(\d+))?(?:x(\d+))?(?::zero([12]))?$")
LAYOUT_SYNTAX = ("D, DxP or DxPxT (data x pipeline stages x tensor-parallel ranks, positive integers), optionally "
                 "followed by :zero1 or :zero2 (sharded optimizer state, without a pipeline), comma-separated, "
                 "e.g. 4,4x1:zero1,2x2,1x1x4")


@dataclass(frozen=True)
class ParallelLayout:
    """`data` data-parallel replicas of `stages` pipeline stages of `tensor` tensor-parallel ranks each;
    `zero` is DataParallel's `shard_optimizer_state` (0: none, 1: ZeRO-1, 2: ZeRO-2)."""

    data: int
    stages: int = 1
    tensor: int = 1
    zero: int = 0

    @property
    def ranks(self) -> int:
        """Total ranks: data x stages x tensor."""
        return self.data * self.stages * self.tensor

    @property
    def name(self) -> str:
        """The layout as `--layouts` writes it, e.g. "4x1:zero1" or "1x1x4"."""
        text = f"{self.data}x{self.stages}" + (f"x{self.tensor}" if self.tensor > 1 else "")
        return text + (f":zero{self.zero}" if self.zero else "")


@dataclass(frozen=True)
class ModelDescription:
    """An MLP of Linear layers between `widths` (ReLU between them), trained with `optimizer` in `dtype`.

    With `recompute`, each pair of consecutive Linear layers (and their activations) is one
    recomputed range, the pair tensor parallelism splits column -> row; an odd last Linear stays plain.
    """

    widths: tuple[int, ...]
    optimizer: str = "adam"
    dtype: str = "float32"
    recompute: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_STATE_COPIES or self.dtype not in DTYPE_BYTES:
            raise ValueError(f"the memory model knows optimizers {sorted(OPTIMIZER_STATE_COPIES)} and dtypes "
                             f"{sorted(DTYPE_BYTES)}, got {self.optimizer!r} and {self.dtype!r}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"an MLP needs at least two positive widths, got {list(self.widths)}")

    @property
    def itemsize(self) -> int:
        """Bytes per value."""
        return DTYPE_BYTES[self.dtype]

    @property
    def linear_count(self) -> int:
        return len(self.widths) - 1


def parse_bytes(text: str) -> int:
    """Read "2GiB", "512 MiB", "64KiB", "100B" or plain "1000000" as bytes.

    Raises:
        ValueError: naming the text when it is not a positive amount with one of the units B, KiB, MiB, GiB.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    count = int(float(match.group(1)) * BYTE_UNITS[unit or "b"]) if match and unit in ("", *BYTE_UNITS) else 0
    if count < 1:
        raise ValueError(f"cannot read memory {text!r}; write a positive number of bytes, optionally with a unit "
                         "B, KiB, MiB or GiB, e.g. 2GiB, 512MiB or 1000000")
    return count


def format_bytes(count: int) -> str:
    """`count` bytes in the largest unit it reaches: "512 B", "1.50 KiB", "2.00 GiB"."""
    for unit in ("GiB", "MiB", "KiB"):
        if count >= BYTE_UNITS[unit.lower()]:
            return f"{count / BYTE_UNITS[unit.lower()]:.2f} {unit}"
    return f"{count} B"


def parse_widths(text: str) -> tuple[int, ...]:
    """Read "784,4096,4096,10" as the MLP's layer widths, input first.

    Raises:
        ValueError: naming the text when it is not at least two positive integers.
    """
    pieces = [piece.strip() for piece in text.split(",")]
    if len(pieces) < 2 or not all(piece.isdigit() and int(piece) > 0 for piece in pieces):
        raise ValueError(f"cannot read widths {text!r}; write at least two positive integers, input width first, "
                         "e.g. 784,4096,4096,10")
    return tuple(int(piece) for piece in pieces)


def parse_parallel_layouts(text: str) -> list[ParallelLayout]:
    """Read "4,4x1:zero1,2x2,1x1x4" into layouts (see `LAYOUT_SYNTAX`).

    Raises:
        ValueError: naming the entry that does not follow the syntax, has a size of 0, or shards
            the optimizer state of a pipeline.
    """
    layouts = []
    for entry in (part.strip() for part in text.split(",")):
        match = LAYOUT_PATTERN.match(entry.lower())
        sizes = [int(group) for group in match.groups()[:3] if group is not None] if match else []
        if not match or 0 in sizes:
            raise ValueError(f"cannot read layout {entry!r} in {text!r}; write {LAYOUT_SYNTAX}")
        data, stages, tensor = sizes + [1] * (3 - len(sizes))
        layout = ParallelLayout(data, stages, tensor, int(match.group(4) or 0))
        if layout.zero and layout.stages > 1:
            raise ValueError(f"layout {entry!r}: sharded optimizer state belongs to DataParallel, which a pipeline "
                             f"does not use; write {data}x1x{tensor}:zero{layout.zero} or drop :zero{layout.zero}")
        layouts.append(layout)
    return layouts


def check_fits_layout(model: ModelDescription, layout: ParallelLayout) -> None:
    """Check that `layout` can hold `model`: tensor-split widths divide evenly, a layer for every stage.

    Raises:
        ValueError: naming the widths or stage count that do not fit, and what would.
    """
    split = [model.widths[index + 1] for index in range(0, model.linear_count - 1, 2)]
    uneven = [width for width in split if width % layout.tensor]
    if layout.tensor > 1 and not split:
        raise ValueError(f"layout {layout.name} splits pairs of Linear layers over {layout.tensor} ranks, but the "
                         f"widths {list(model.widths)} make one Linear layer; give at least three widths")
    if uneven:
        raise ValueError(f"layout {layout.name} splits the widths {split} over {layout.tensor} tensor-parallel "
                         f"ranks, but {uneven} are not multiples of {layout.tensor}; choose such widths or another "
                         "tensor-parallel size")
    elements = len(sequential_elements(model))
    if elements < layout.stages:
        raise ValueError(f"layout {layout.name} needs {layout.stages} stages but the model has {elements} layers "
                         "to cut; use at most that many stages")


def layer_units(model: ModelDescription) -> list[list[int]]:
    """The Linear layers (by index) of each unit of the model: one Linear each, or with `recompute` each
    recomputed pair (an odd last Linear alone)."""
    count = model.linear_count
    if not model.recompute:
        return [[index] for index in range(count)]
    return [[index, index + 1] for index in range(0, count - 1, 2)] + ([[count - 1]] if count % 2 else [])


def sequential_elements(model: ModelDescription) -> list[list[int]]:
    """The Linear layers of each element of the model's Sequential, as a pipeline cuts it: a Linear, then
    its ReLU (none), or one element per recomputed range."""
    elements = []
    for unit in layer_units(model):
        elements.append(unit)
        if not model.recompute and unit[-1] < model.linear_count - 1:
            elements.append([])
    return elements


def whole_parameter_sizes(model: ModelDescription, index: int) -> tuple[int, int]:
    """(weight, bias) values of Linear `index`, whole."""
    fan_in, fan_out = model.widths[index], model.widths[index + 1]
    return fan_in * fan_out, fan_out


def split_role(model: ModelDescription, index: int, tensor: int) -> str:
    """How tensor parallelism holds Linear `index`: "column", "row", or "whole" (T = 1, or a lone last layer)."""
    if tensor == 1 or (index == model.linear_count - 1 and index % 2 == 0):
        return "whole"
    return "column" if index % 2 == 0 else "row"


def local_parameter_sizes(model: ModelDescription, index: int, tensor: int) -> tuple[int, int]:
    """(weight, bias) values one tensor-parallel rank holds of Linear `index`; a row-parallel bias stays whole."""
    weight, bias = whole_parameter_sizes(model, index)
    role = split_role(model, index, tensor)
    if role == "column":
        return weight // tensor, bias // tensor
    return (weight // tensor, bias) if role == "row" else (weight, bias)


def local_output_width(model: ModelDescription, index: int, tensor: int) -> int:
    """Columns of Linear `index`'s output on one rank: a share after a column-parallel layer, else whole."""
    width = model.widths[index + 1]
    return width // tensor if split_role(model, index, tensor) == "column" else width


def local_input_width(model: ModelDescription, index: int, tensor: int) -> int:
    """Columns of Linear `index`'s input on one rank: a share before a row-parallel layer, else whole."""
    width = model.widths[index]
    return width // tensor if split_role(model, index, tensor) == "row" else width


def stage_linears(model: ModelDescription, layout: ParallelLayout) -> list[list[int]]:
    """The Linear layers of each pipeline stage, cut as `Pipeline` does by default (balancing the parameters
    each rank holds)."""
    elements = sequential_elements(model)
    counts = [sum(sum(local_parameter_sizes(model, index, layout.tensor)) for index in element)
              for element in elements]
    per_stage, start = [], 0
    for size in balance_costs(counts, layout.stages):
        per_stage.append([index for element in elements[start:start + size] for index in element])
        start += size
    return per_stage


def parameters_in_final_order(model: ModelDescription, linears: Sequence[int], tensor: int) -> list[int]:
    """Sizes of one rank's parameters in the order backward completes them (last layer first, bias before
    weight): the order of DataParallel's buckets, which ZeRO shards."""
    sizes = []
    for index in reversed(linears):
        weight, bias = local_parameter_sizes(model, index, tensor)
        sizes += [bias, weight]
    return sizes


def optimizer_state_values(model: ModelDescription, sizes: Sequence[int], layout: ParallelLayout) -> list[int]:
    """Values of optimizer state each data-parallel rank keeps of parameters of `sizes`: all of them
    for every rank without ZeRO, else each rank's own whole parameters (DataParallel's `shard_owners`)."""
    copies = OPTIMIZER_STATE_COPIES[model.optimizer]
    if not layout.zero:
        return [copies * sum(sizes)]
    owners = shard_owners(sizes, layout.data)
    return [copies * count for count in rank_counts(sizes, owners, layout.data)]


def gradient_values(sizes: Sequence[int], layout: ParallelLayout) -> list[int]:
    """Values of gradients each data-parallel rank keeps between steps: all of them, or under ZeRO-2 each
    rank's own whole parameters' (DataParallel's `shard_owners`), one entry per rank as `optimizer_state_values`."""
    if layout.zero != 2:
        return [sum(sizes)] * (layout.data if layout.zero else 1)
    return rank_counts(sizes, shard_owners(sizes, layout.data), layout.data)


def reduce_scattering_bytes(model: ModelDescription, sizes: Sequence[int], layout: ParallelLayout) -> int:
    """Bytes of whole gradient buckets a ZeRO-2 rank holds at once during backward (0 otherwise): the most
    in IN_FLIGHT reduce-scattering buckets and the one backward writes, consecutive in backward order, with
    DataParallel's default bucket size."""
    if layout.zero != 2:
        return 0
    lengths = bucket_lengths([size * model.itemsize for size in sizes], int(DEFAULT_BUCKET_CAP_MB * 2**20))
    ends = numpy.cumsum(lengths).tolist()
    bucket_bytes = [sum(sizes[end - length:end]) * model.itemsize for length, end in zip(lengths, ends)]
    window = IN_FLIGHT + 1
    return max(sum(bucket_bytes[start:start + window]) for start in range(max(len(bucket_bytes) - window, 0) + 1))


def micro_batch_rows(global_batch: int, layout: ParallelLayout, micro_batches: int) -> int:
    """Rows of the largest micro-batch on one rank: the global batch over the replicas and micro-batches."""
    return -(-global_batch // (layout.data * micro_batches))


def in_flight_micro_batches(stage: int, layout: ParallelLayout, micro_batches: int) -> int:
    """Micro-batches whose activations stage `stage` holds at once under 1F1B: stages - stage (at most all)."""
    return min(layout.stages - stage, micro_batches)


def kept_activation_bytes(model: ModelDescription, linears: Sequence[int], layout: ParallelLayout,
                          stage: int) -> int:
    """Bytes per row a stage keeps for each micro-batch in flight, from its forward to its backward.

    Each unit's output (a ReLU's, or the last Linear's; with `recompute` a range keeps only its input,
    its predecessor's output); in a pipeline, a later stage's received input and an earlier stage's
    buffer for the gradient it will receive; on the last stage, cross-entropy's log-probabilities and
    target coefficients and the output gradient (three values per class).
    """
    tensor = layout.tensor
    kept = sum(local_output_width(model, unit[-1], tensor) for unit in layer_units(model) if unit[0] in linears)
    if stage > 0:
        kept += local_input_width(model, linears[0], tensor)
    if stage < layout.stages - 1:
        kept += local_output_width(model, linears[-1], tensor)
    else:
        kept += 3 * model.widths[-1]
    return kept * model.itemsize


def in_transit_bytes(model: ModelDescription, linears: Sequence[int], tensor: int, stage: int) -> int:
    """Bytes per row a later pipeline stage holds for messages beyond its micro-batches in flight: the
    inputs it receives ahead (`RECEIVE_AHEAD`) and the input gradient it is still sending."""
    return 0 if stage == 0 else (RECEIVE_AHEAD + 1) * local_input_width(model, linears[0], tensor) * model.itemsize


def backward_working_bytes(model: ModelDescription, linears: Sequence[int], tensor: int, first_stage: bool) -> int:
    """Bytes per row alive besides the kept ones at the busiest moment of a stage's backward.

    A ReLU's backward holds its output gradient (unless it is the kept one the stage received), a
    one-byte mask and the input gradient it makes; a Linear's, its output gradient (the ReLU's result,
    or the kept loss gradient) and its input gradient (none for the model's first layer). With
    `recompute`, the largest range's recomputed outputs and its output gradient come on top.
    """
    moments = []
    for index in linears:
        output, needs_input = local_output_width(model, index, tensor), not (first_stage and index == linears[0])
        input_gradient = local_input_width(model, index, tensor) * needs_input
        if index == model.linear_count - 1:
            moments.append(input_gradient * model.itemsize)
            continue
        new_output_gradient = output * (index != linears[-1])
        moments += [(new_output_gradient + output) * model.itemsize + output,
                    (output + input_gradient) * model.itemsize]
    return max(moments) + recomputed_bytes(model, linears, tensor)


def recomputed_bytes(model: ModelDescription, linears: Sequence[int], tensor: int) -> int:
    """Bytes per row a recomputed range adds during its backward: the outputs its second forward makes
    and the range's output gradient, held throughout; the largest range's (0 without `recompute`)."""
    ranges = [unit for unit in layer_units(model) if unit[0] in linears and len(unit) > 1] if model.recompute else []
    return max((sum(local_output_width(model, index, tensor) for index in unit) +
                local_output_width(model, unit[-1], tensor) for unit in ranges), default=0) * model.itemsize


def peak_activation_bytes(model: ModelDescription, layout: ParallelLayout, global_batch: int, micro_batches: int,
                          stage: int, linears: Sequence[int]) -> int:
    """Peak activation bytes of stage `stage`: what it keeps for its micro-batches in flight, plus one
    micro-batch's messages in transit and backward working set."""
    kept = kept_activation_bytes(model, linears, layout, stage)
    working = backward_working_bytes(model, linears, layout.tensor, stage == 0)
    flight = in_flight_micro_batches(stage, layout, micro_batches)
    per_row = flight * kept + in_transit_bytes(model, linears, layout.tensor, stage) + working
    return micro_batch_rows(global_batch, layout, micro_batches) * per_row


def rank_memory(model: ModelDescription, layout: ParallelLayout, global_batch: int,
                micro_batches: int = 1) -> list[MemoryReport]:
    """The memory report of every distinct rank: for each pipeline stage, each ZeRO shard (one without ZeRO).

    Tensor-parallel ranks hold equal shares and data-parallel replicas without ZeRO equal copies, so they
    appear once.

    Args:
        model: the MLP and its training.
        layout: how its ranks are arranged.
        global_batch: samples per optimizer step over all replicas.
        micro_batches: per replica and step (a pipeline's; 1 without one).

    Returns:
        Reports in stage order, then data-parallel rank order, as `memory_report` would measure them after
        the first optimizer step; under ZeRO-2 the gradients are each rank's own, and the peak holds the
        whole buckets of backward's reduce-scatters too (`reduce_scattering_bytes`).

    Raises:
        ValueError: as `check_fits_layout`.
    """
    check_fits_layout(model, layout)
    reports = []
    for stage, linears in enumerate(stage_linears(model, layout)):
        sizes = parameters_in_final_order(model, linears, layout.tensor)
        peak = peak_activation_bytes(model, layout, global_batch, micro_batches, stage, linears)
        peak += reduce_scattering_bytes(model, sizes, layout)
        parameter_bytes = sum(sizes) * model.itemsize
        for state, gradients in zip(optimizer_state_values(model, sizes, layout), gradient_values(sizes, layout)):
            reports.append(MemoryReport(parameter_bytes, gradients * model.itemsize, state * model.itemsize, peak))
    return reports


def busiest_rank(reports: Sequence[MemoryReport]) -> MemoryReport:
    """The report of the rank that needs the most memory (the first of equals)."""
    return max(reports, key=lambda report: report.total)


def shortfall(report: MemoryReport, memory_per_rank: int) -> int:
    """Bytes the rank of `report` needs beyond `memory_per_rank` (0 when it fits)."""
    return max(report.total - memory_per_rank, 0)
