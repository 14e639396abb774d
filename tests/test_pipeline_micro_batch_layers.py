"""Dropout and BatchNorm in a pipeline under real mpiexec: what the Dropout and train_step docstrings promise."""
import re

from mpi_launch import run_mpi

TIMEOUT_S = 300


def test_two_stages_draw_the_sequential_models_dropout_masks_and_normalise_per_micro_batch():
    result = run_mpi("pipe_micro_batch_layers.py", 2, timeout=TIMEOUT_S)
    checks = re.findall(r"LAYERS-OK rank=(\d) (dropout schedule=(?:gpipe|1f1b|zb-h1|interleaved)|batchnorm)",
                        result.stdout)  # ranks' lines may interleave
    expected = [(str(rank), what) for rank in range(2) for what in
                ["dropout schedule=gpipe", "dropout schedule=1f1b", "dropout schedule=zb-h1",
                 "dropout schedule=interleaved", "batchnorm"]]
    assert sorted(checks) == sorted(expected), result.stdout
