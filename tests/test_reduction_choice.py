"""How gradients are reduced is chosen in one place, from an ordered list of candidates that each say why not."""
import re

import numpy
import pytest

from mpi_launch import run_mpi
from mpiprop.distributed.data_parallel.compression import Float16Compression, NoCompression, as_compression
from mpiprop.distributed.data_parallel.reduction_choice import ReductionFacts, choose_reduction

ONE_NODE = dict(ranks=4, nodes=1, largest_node=4)


def reasons(**facts) -> tuple[str, dict[str, str]]:
    choice = choose_reduction(ReductionFacts(**facts))
    return choice.chosen, dict(choice.reasons)


def test_one_node_of_cpu_ranks_sums_in_shared_memory():
    assert reasons(**ONE_NODE) == ("shared memory", {"hierarchical": "every rank is on one node",
                                                     "mpi": "shared memory ranks above it"})


def test_several_nodes_sum_within_each_then_between_leaders():
    assert reasons(ranks=4, nodes=2, largest_node=2) == (
        "hierarchical", {"shared memory": "the ranks span 2 nodes", "mpi": "hierarchical ranks above it"})


@pytest.mark.parametrize("facts,why", [
    (dict(shared_memory_asked=False), "shared_memory=False was passed"),
    (dict(ranks=1, nodes=1, largest_node=1), "one rank has nobody to share memory with"),
    (dict(on_cpu=False), "the gradients are GPU arrays"),
    (dict(float_dtypes=False), "a bucket holds other than plain floats"),
    (dict(compression=Float16Compression()), "shared memory cannot carry Float16Compression(headroom=32768)"),
    (dict(window_prints_errors=True), "Open MPI's UCX one-sided component is loaded (mpiprop run passes --mca osc ^ucx)"),
    (dict(ranks=4, nodes=4, largest_node=1), "every node holds one rank"),
    (dict(room_shortage="/dev/shm on rank 0 has 1 MiB free"), "/dev/shm on rank 0 has 1 MiB free"),
])
def test_each_obstacle_to_shared_memory_falls_back_to_mpi_and_is_named(facts, why):
    assert reasons(**{**ONE_NODE, **facts}) == ("mpi", {"shared memory": why, "hierarchical": why})


def test_sharded_gradients_reduce_scatter_in_shared_slots_on_one_node_else_with_mpi():
    assert reasons(**ONE_NODE, sharded=True) == (
        "shared memory reduce-scatter", {"mpi reduce-scatter": "shared memory reduce-scatter ranks above it"})
    assert reasons(ranks=4, nodes=2, largest_node=2, sharded=True) == (
        "mpi reduce-scatter", {"shared memory reduce-scatter": "the ranks span 2 nodes"})


def test_the_choice_prints_the_chosen_reduction_and_why_not_the_others():
    assert str(choose_reduction(ReductionFacts(**ONE_NODE, on_cpu=False))) == (
        "gradient reduction: mpi\n"
        "  not shared memory: the gradients are GPU arrays\n"
        "  not hierarchical: the gradients are GPU arrays")


def test_compressions_say_whether_sums_are_exact_and_shared_memory_may_carry_them():
    assert NoCompression().exact and NoCompression().shared_memory
    assert not Float16Compression().exact and not Float16Compression().shared_memory
    assert as_compression("float16") == Float16Compression() and as_compression(None) == NoCompression()
    with pytest.raises(ValueError, match="unknown gradient compression 'int8'"):
        as_compression("int8")


def test_float16_scale_makes_the_ranks_summed_largest_value_fit_the_headroom():
    compression = Float16Compression(headroom=1024.0)
    assert compression.scale_for(3.0, 4) == 64.0  # 3 * 4 * 64 = 768 <= 1024 < 3 * 4 * 128
    assert compression.scale_for(0.0, 4) == 1.0 and compression.scale_for(float("inf"), 4) == 1.0
    buffer = numpy.array([1.5, -0.25])
    wire = compression.encode(buffer, 64.0)
    assert wire.dtype == numpy.float16
    compression.decode(wire, buffer, 64.0)
    numpy.testing.assert_array_equal(buffer, [1.5, -0.25])


@pytest.mark.mpi
def test_data_parallel_describes_its_reduction_under_mpiexec():
    result = run_mpi("reduction_describe.py", 2, timeout=120)
    assert result.stdout.count("DESCRIBE-OK") == 2, result.stdout
