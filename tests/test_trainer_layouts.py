"""The Trainer drives every layout alike under real mpiexec: DataParallel, a pipeline, a 2x2 grid, a 4-stage
pipeline, tensor-parallel groups as replicas and the 3-D layouts (1x2x2, 2x2x2) reach LocalStrategy's weights on the
global batch; checkpoints move between layouts; resume is bit-identical; a NaN sample is skipped by every rank alike,
and a NaN is located by layer, rank and stage."""
import re

import pytest

from mpi_launch import run_mpi

TIMEOUT_S = 300  # generous for an oversubscribed machine; a hang still fails


def reports(stdout):
    """(rank, check, layouts) per LAYOUT-OK report; ranks' reports may share a line."""
    found = []
    for report in re.split(r"(?=LAYOUT-OK )", stdout):
        match = re.match(r"LAYOUT-OK rank=(\d+) (\S+) (.*?)(?: max_abs_diff=\S+)?\s*$", report.split("\n")[0])
        if match:
            found.append(match.groups())
    return found


def expected_reports(ranks, layouts):
    checks = [("equivalent", layout) for layout in layouts[1:]]
    checks += [("resumed", f"written={writer} read={reader}") for writer in layouts for reader in layouts]
    checks += [("best-weights", f"written={writer} read={reader}") for writer in layouts for reader in layouts]
    checks += [("bit-identical", layout) for layout in layouts]
    checks += [("skipped", layout) for layout in layouts[1:]]
    checks += [("located", layout) for layout in layouts if layout.startswith("pipe")]
    return sorted((str(rank), check, what) for rank in range(ranks) for check, what in checks)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, layouts", [(2, ["local", "dp", "pipe2"]),
                                            (4, ["local", "dp", "pipe2", "pipe4"]),
                                            (4, ["local", "tp2", "tp4", "pipe2-tp2"]),
                                            (8, ["local", "pipe2-tp2"])],
                         ids=["2 ranks", "4 ranks (pipe2 is a 2x2 grid)", "4 ranks, tensor parallel (tp2: 2 replicas)",
                              "8 ranks, 2 replicas x 2 stages x 2 tensor ranks"])
def test_every_layout_trains_resumes_and_loads_checkpoints_like_one_process(tmp_path, ranks, layouts):
    result = run_mpi("trainer_layouts.py", ranks, tmp_path, *layouts, timeout=TIMEOUT_S)
    found = sorted((rank, check, what.strip()) for rank, check, what in reports(result.stdout))
    assert found == expected_reports(ranks, layouts), result.stdout
