"""Each layout weighs its ranks by their share of the loss's denominator: torch's mean over the global batch."""
import re

import numpy
import pytest

import mpiprop.network as nn
from mpi_launch import run_mpi
from mpiprop.network.models.next_token_loss import NextTokenLoss

LAYOUTS = ("data-parallel", "zero1", "zero2", "pipeline-stages=1")
LOSSES = ("ce-weight-ignore", "ce-ignore-smoothing", "ce-weight", "mse", "bce")


def test_each_loss_counts_the_denominator_its_mean_divides_by():
    labels = numpy.array([0, 2, -1, 1, 2])
    weight = numpy.array([0.5, 2.0, 3.0])
    assert nn.CrossEntropyLoss(weight=weight, ignore_index=-1).denominator(labels) == 0.5 + 3.0 + 2.0 + 3.0
    assert nn.CrossEntropyLoss(ignore_index=-1).denominator(labels) == 4
    assert nn.CrossEntropyLoss(weight=weight).denominator(numpy.full((5, 3), 1 / 3)) == 5
    assert nn.MSELoss().denominator(numpy.zeros((5, 3))) == 15
    assert nn.BCEWithLogitsLoss().denominator(numpy.zeros((4, 2))) == 8



def test_next_token_loss_divides_by_the_positions_not_ignored():
    ids = numpy.array([[3, -1, 0], [-1, -1, 2]])
    logits = numpy.random.default_rng(1).standard_normal((2, 3, 4))
    mean, summed = NextTokenLoss(ignore_index=-1), NextTokenLoss(ignore_index=-1, reduction="sum")
    assert mean.denominator(ids) == 3
    assert mean(logits, ids) == pytest.approx(summed(logits, ids) / 3, rel=1e-12)

@pytest.mark.parametrize("loss_fn,target", [
    (nn.CrossEntropyLoss(weight=numpy.array([0.5, 2.0, 3.0]), ignore_index=-1), numpy.array([0, 2, -1, 1, 2])),
    (nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=-1), numpy.array([0, -1, -1, 1, 2])),
    (nn.MSELoss(), numpy.arange(15.0).reshape(5, 3)),
])
def test_the_denominator_is_what_the_mean_divides_by(loss_fn, target):
    logits = numpy.random.default_rng(0).standard_normal((5, 3))
    mean = loss_fn(logits, target)
    summed = type(loss_fn)(**{**vars_of(loss_fn), "reduction": "sum"})(logits, target)
    assert mean == pytest.approx(summed / loss_fn.denominator(target), rel=1e-12)


def vars_of(loss_fn) -> dict:
    names = {"weight", "ignore_index", "label_smoothing"}
    return {name: value for name, value in vars(loss_fn).items() if name in names}


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_every_layout_gives_the_global_batch_mean_for_every_loss_option(ranks):
    result = run_mpi("loss_denominators.py", ranks, timeout=300)
    found = set(re.findall(r"DENOMINATOR-OK (\S+) (\S+) rank=(\d)", result.stdout))
    layouts = LAYOUTS + (("pipeline-stages=2",) if ranks == 4 else ())
    expected = {(layout, loss, str(rank)) for layout in layouts for loss in LOSSES for rank in range(ranks)}
    assert found == expected, sorted(expected - found)
