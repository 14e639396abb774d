"""Memory report: byte counts against hand-computed ones, the peak tracer, the table, and the example per rank."""
import importlib.util
import re
import tracemalloc
from pathlib import Path

import numpy
import pytest

import mpiprop.network as nn
from mpi_launch import run_mpi

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "memory_report.py"


def small_model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


# Linear(4, 3): 12 + 3 floats; Linear(3, 2): 6 + 2 floats; 23 float32 values = 92 bytes
PARAMETER_BYTES = 92


def test_adam_holds_parameters_gradients_and_two_moments():
    model = small_model()
    optimizer = nn.optim.Adam(model.parameters(), lr=0.01)
    assert nn.memory_report(model.parameters(), optimizer) == nn.MemoryReport(92, 92, 0, None)
    model.backward(numpy.ones((5, 2), dtype=numpy.float32), model.forward(numpy.ones((5, 4), dtype=numpy.float32))[1])
    optimizer.step()
    report = nn.memory_report(model.parameters(), optimizer, peak_activations=10)
    assert report == nn.MemoryReport(parameters=PARAMETER_BYTES, gradients=PARAMETER_BYTES,
                                     optimizer_state=2 * PARAMETER_BYTES, peak_activations=10)
    assert report.model_state == 4 * PARAMETER_BYTES


def test_sgd_with_momentum_holds_one_buffer_and_float64_doubles_everything():
    model = small_model().to(dtype=numpy.float64)
    optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.backward(numpy.ones((5, 2)), model.forward(numpy.ones((5, 4)))[1])
    optimizer.step()
    assert nn.memory_report(model.parameters(), optimizer) == nn.MemoryReport(184, 184, 184)


def test_a_shared_parameter_counts_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert nn.memory_report(model.parameters() + model.parameters()).parameters == (16 + 4) * 4


def test_peak_memory_counts_a_forward_pass_activations():
    model = nn.Sequential(nn.Linear(100, 50, dtype=numpy.float64), nn.ReLU())
    x = numpy.ones((64, 100))
    with nn.PeakMemory() as peak:
        y, cache = model.forward(x)
    activation = 64 * 50 * 8  # the Linear's output, then the ReLU's
    assert 2 * activation <= peak.bytes <= 2 * activation + 4096
    assert not tracemalloc.is_tracing()


def test_peak_memory_leaves_a_running_trace_running_and_counts_from_entry():
    tracemalloc.start()
    try:
        held = numpy.ones(100_000)
        with nn.PeakMemory() as peak:
            numpy.ones(1000)
        assert 8000 <= peak.bytes <= 8000 + 4096
        assert tracemalloc.is_tracing()
        del held
    finally:
        tracemalloc.stop()


def test_recomputation_lowers_the_measured_peak():
    def peak_of(recompute: bool) -> int:
        nn.manual_seed(0)
        blocks = [[nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()] for _ in range(6)]
        model = nn.Sequential(*[layer for block in blocks for layer in
                                ([nn.Recompute(*block)] if recompute else block)])
        x = numpy.ones((1024, 64), dtype=numpy.float32)  # activations well above the step's fixed allocations
        with nn.PeakMemory() as peak:
            model.backward(numpy.ones_like(x), model.forward(x)[1], input_grad=False)
        return peak.bytes
    assert peak_of(True) < 0.75 * peak_of(False)


def test_table_prints_mebibytes_per_rank():
    table = nn.memory_table([nn.MemoryReport(1 << 20, 1 << 20, 2 << 20, 512 << 10), nn.MemoryReport(1 << 20, 0, 0)])
    assert table.splitlines() == [
        "rank  params MiB  grads MiB  optim MiB  peak act MiB  total MiB",
        "   0       1.000      1.000      2.000         0.500      4.500",
        "   1       1.000      0.000      0.000             -      1.000",
    ]


def test_wrong_arguments_are_named():
    with pytest.raises(ValueError, match="'cpu' or 'cuda', got 'gpu'"):
        nn.PeakMemory("gpu")
    with pytest.raises(TypeError, match="got PeakMemory"):
        nn.memory_report(small_model().parameters(), peak_activations=nn.PeakMemory())


def load_example():
    spec = importlib.util.spec_from_file_location("example_memory_report", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_reports_the_hand_computed_bytes_in_one_process():
    reports, throughput = load_example().main(["--hidden", "8", "--blocks", "2", "--steps", "2"])
    # a block: Linear(8, 32) and Linear(32, 8), (8*32 + 32) + (32*8 + 8) = 552 float32 values
    parameters = 2 * 552 * 4
    assert reports == [nn.MemoryReport(parameters, parameters, 2 * parameters, reports[0].peak_activations)]
    assert reports[0].peak_activations > 0 and throughput > 0


def table_rows(output: str) -> list[list[float]]:
    return [[float(value) for value in line.split()[1:5]] for line in output.splitlines()
            if re.match(r"\s+\d+\s+\d", line)]


def test_example_splits_parameter_memory_over_tensor_parallel_ranks():
    arguments = ["--hidden", "256", "--blocks", "1", "--steps", "2", "--batch-size", "8"]
    data = table_rows(run_mpi(EXAMPLE, 2, *arguments, "--layout", "data").stdout)
    tensor = table_rows(run_mpi(EXAMPLE, 2, *arguments, "--layout", "tensor").stdout)
    # whole: (256*1024 + 1024) + (1024*256 + 256) floats = 2.005 MiB; a half: (256*512 + 512) + (512*256 + 256)
    assert [row[:3] for row in data] == [[2.005, 2.005, 4.010]] * 2
    assert [row[:3] for row in tensor] == [[1.003, 1.003, 2.006]] * 2


def test_example_on_each_device_reports_split_parameters_and_a_peak(device):
    arguments = ["--hidden", "256", "--blocks", "1", "--steps", "2", "--batch-size", "8", "--device", device]
    rows = table_rows(run_mpi(EXAMPLE, 2, *arguments, "--layout", "tensor").stdout)
    assert [row[:3] for row in rows] == [[1.003, 1.003, 2.006]] * 2
    # at least the first Linear's output, 8 x 512 float32 values, is held between forward and backward
    assert all(row[3] >= 8 * 512 * 4 / 2**20 for row in rows)


def test_peak_memory_on_each_device_sees_an_allocation(xp, device):
    with nn.PeakMemory(device) as peak:
        kept = xp.ones(100_000)
    slack = 4096 if device == "cpu" else 1 << 20  # cupy's pool rounds blocks up
    assert 800_000 <= peak.bytes <= 800_000 + slack
    del kept
