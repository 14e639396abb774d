"""Learning-rate schedules against hand-computed closed forms and PyTorch's schedulers."""
import math

import pytest

from mpiprop.network.optim.lr_schedules import ConstantLR, CosineAnnealingLR, ExponentialLR, LinearWarmup, StepLR


def values(schedule, count):
    return [schedule(t) for t in range(count)]


def test_step_multiplies_by_gamma_every_step_size():
    assert values(StepLR(0.8, step_size=3, gamma=0.5), 8) == pytest.approx([0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2])


def test_exponential_is_a_geometric_sequence():
    assert values(ExponentialLR(2.0, gamma=0.5), 4) == pytest.approx([2.0, 1.0, 0.5, 0.25])


def test_cosine_hits_the_ends_and_the_middle_and_rises_again_after_total_as_pytorchs():
    schedule = CosineAnnealingLR(1.0, total=8, min_lr=0.2)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(4) == pytest.approx(0.6)
    assert schedule(2) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule(8) == pytest.approx(0.2)
    assert schedule(12) == pytest.approx(0.6) and schedule(16) == pytest.approx(1.0)


def test_linear_warmup_ramps_then_hands_over():
    schedule = LinearWarmup(StepLR(1.0, step_size=2, gamma=0.1), warmup_steps=4, start_factor=0.2)
    assert values(schedule, 8) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1])


def test_warmup_of_a_number_is_a_warmup_to_a_constant():
    assert values(LinearWarmup(0.3, warmup_steps=3, start_factor=0.0), 5) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3])
    assert ConstantLR(0.3)(7) == 0.3


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_schedules_reject_steps_that_are_not_non_negative_integers(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        StepLR(0.1, 2)(bad)


def test_schedules_reject_bad_settings():
    with pytest.raises(ValueError, match="step_size"):
        StepLR(0.1, 0)
    with pytest.raises(ValueError, match="start_factor"):
        LinearWarmup(0.1, 5, start_factor=1.5)


def torch_lrs(torch, make_scheduler, base_lr, count):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(count):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_schedules_match_pytorch():
    torch = pytest.importorskip("torch")
    lr_scheduler = torch.optim.lr_scheduler
    cases = [
        (StepLR(0.5, 4, 0.3), lambda o: lr_scheduler.StepLR(o, 4, 0.3)),
        (ExponentialLR(0.5, 0.9), lambda o: lr_scheduler.ExponentialLR(o, 0.9)),
        (CosineAnnealingLR(0.5, 12, 0.01), lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.01)),
        (LinearWarmup(CosineAnnealingLR(0.5, 10), 5),
         lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, total_iters=5),
                                                 lr_scheduler.CosineAnnealingLR(o, T_max=10)], milestones=[5])),
    ]
    for ours, make in cases:
        assert values(ours, 40) == pytest.approx(torch_lrs(torch, make, 0.5, 40), rel=1e-6, abs=1e-12)
