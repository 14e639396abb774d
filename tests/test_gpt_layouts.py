"""The GPT in every layout but tensor parallel equals one process on the global batch under real mpiexec: data
parallel (2 and 4 ranks), ZeRO-1 and ZeRO-2, nn.Recompute per block half, pipelines of 2 and 4 stages (GPipe and
1F1B; interleaved and zero-bubble at 2 stages) with the embedding and head tied across the first and last stage, one
stage holding both (listed once) with 2 replicas, a 2 x 2 grid, and a checkpoint moving from
data parallel to a pipeline to one process."""
import re

import pytest

from mpi_launch import run_mpi

TIMEOUT_S = 400  # generous for an oversubscribed machine; a hang still fails


def passed(stdout):
    return sorted(re.findall(r"GPT-OK (\S+)", stdout))


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, layouts", [
    (2, ["local-recompute", "dp", "dp-recompute", "zero1", "zero2"]),
    (2, ["pipe2-gpipe", "pipe2-1f1b", "pipe2-interleaved", "pipe2-zb-h1", "pipe1-1f1b"]),
    (4, ["dp", "pipe4-gpipe", "pipe4-1f1b", "pipe2-1f1b"]),
    (2, ["resume"]),
], ids=["2 ranks: recompute, data parallel, ZeRO", "2 ranks: 2 stages, every schedule; 1 stage x 2 replicas",
        "4 ranks: 4 stages and a 2x2 grid",
        "checkpoint: data parallel -> 2 stages -> one process"])
def test_the_gpt_trains_like_one_process_in_every_layout(tmp_path, ranks, layouts):
    result = run_mpi("gpt_layouts.py", ranks, tmp_path, *layouts, timeout=TIMEOUT_S)
    assert passed(result.stdout) == sorted(layouts), result.stdout + result.stderr
