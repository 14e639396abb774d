"""How GPU arrays travel between ranks: GPU binding, NCCL choice, page-locked host staging."""
import numpy
import pytest

from mpiprop import distributed
from mpiprop.distributed.transport import gpu
from mpiprop.network import backend

needs_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="needs cupy and a GPU")
needs_no_gpu = pytest.mark.skipif(backend.cupy_available(), reason="checks the behaviour without a GPU")


@needs_no_gpu
def test_bind_gpu_without_a_gpu_says_to_run_on_the_cpu():
    with pytest.raises(ValueError, match="needs cupy and at least one GPU"):
        distributed.bind_gpu()


@needs_no_gpu
def test_without_a_gpu_nccl_is_not_chosen_and_host_copies_are_plain():
    assert distributed.Communicator().nccl_enabled is False
    source = numpy.arange(12.0).reshape(3, 4)[:, ::2]
    copy = gpu.copy_to_host(source)
    assert copy.flags.c_contiguous and numpy.array_equal(copy, source)


def test_use_nccl_accepts_only_auto_or_false():
    with pytest.raises(ValueError, match="use_nccl must be 'auto' or False, got 'yes'"):
        distributed.Communicator(use_nccl="yes")


@needs_gpu
def test_one_rank_owning_its_gpu_reduces_and_broadcasts_through_nccl():
    cupy = backend.module_for_device("cuda")
    assert distributed.bind_gpu() == 0
    comm = distributed.Communicator()
    assert comm.nccl_enabled
    values = cupy.arange(6, dtype=cupy.float32)
    comm.allreduce(values)
    comm.bcast(values, root=0)
    assert cupy.array_equal(values, cupy.arange(6, dtype=cupy.float32))
    forced = distributed.Communicator(force_host_staging=True)
    assert not forced.nccl_enabled
    forced.allreduce(values)
    assert cupy.array_equal(values, cupy.arange(6, dtype=cupy.float32))


@needs_gpu
def test_gpu_arrays_are_staged_through_page_locked_memory():
    cupy = backend.module_for_device("cuda")
    source = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)[:, ::2]
    copy = gpu.copy_to_host(source)
    assert isinstance(copy, numpy.ndarray) and copy.flags.c_contiguous
    assert numpy.array_equal(copy, cupy.asnumpy(source))
    runtime = cupy.cuda.runtime
    page_locked = getattr(runtime, "memoryTypeHost", 1)  # cudaMemoryTypeHost
    assert runtime.pointerGetAttributes(copy.ctypes.data).type == page_locked
