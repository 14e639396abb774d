"""SGD, Adam and AdamW: updates written out by hand, against torch.optim, and state-dict round trips."""
from __future__ import annotations

import math

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend

P0 = numpy.array([1.0, -2.0, 0.5])
GRADS = [numpy.array([0.5, -1.0, 2.0]), numpy.array([-0.3, 0.2, 1.0]), numpy.array([0.1, 0.4, -0.6])]
LR = 0.1


def run_steps(xp, optimizer_class, count: int = 3, dtype=numpy.float64, **options) -> list[numpy.ndarray]:
    """Apply the fixed gradients GRADS[:count]; return the parameter after each step."""
    param = nn.Parameter(xp.asarray(P0.astype(dtype)))
    optimizer = optimizer_class([param], lr=LR, **options)
    history = []
    for g in GRADS[:count]:
        optimizer.zero_grad()
        param.grad += xp.asarray(g.astype(dtype))
        optimizer.step()
        assert param.data.dtype == dtype
        history.append(backend.to_numpy(param.data).copy())
    return history


def assert_steps(actual: list[numpy.ndarray], expected: list[numpy.ndarray], rtol: float = 1e-12) -> None:
    for step, (got, want) in enumerate(zip(actual, expected, strict=True), start=1):
        numpy.testing.assert_allclose(got, want, rtol=rtol, atol=1e-14, err_msg=f"after step {step}")


# --- SGD, by hand ---------------------------------------------------------------------------

g1, g2, g3 = GRADS


def test_sgd_plain(xp):
    p1 = P0 - LR * g1
    p2 = p1 - LR * g2
    p3 = p2 - LR * g3
    assert_steps(run_steps(xp, nn.optim.SGD), [p1, p2, p3])


def test_sgd_momentum(xp):
    buf1 = g1  # the first buffer is the gradient itself, as in PyTorch
    p1 = P0 - LR * buf1
    buf2 = 0.9 * buf1 + g2
    p2 = p1 - LR * buf2
    buf3 = 0.9 * buf2 + g3
    p3 = p2 - LR * buf3
    assert_steps(run_steps(xp, nn.optim.SGD, momentum=0.9), [p1, p2, p3])


def test_sgd_momentum_with_dampening(xp):
    buf1 = g1
    p1 = P0 - LR * buf1
    buf2 = 0.9 * buf1 + (1 - 0.3) * g2
    p2 = p1 - LR * buf2
    buf3 = 0.9 * buf2 + (1 - 0.3) * g3
    p3 = p2 - LR * buf3
    assert_steps(run_steps(xp, nn.optim.SGD, momentum=0.9, dampening=0.3), [p1, p2, p3])


def test_sgd_nesterov(xp):
    buf1 = g1
    p1 = P0 - LR * (g1 + 0.9 * buf1)
    buf2 = 0.9 * buf1 + g2
    p2 = p1 - LR * (g2 + 0.9 * buf2)
    buf3 = 0.9 * buf2 + g3
    p3 = p2 - LR * (g3 + 0.9 * buf3)
    assert_steps(run_steps(xp, nn.optim.SGD, momentum=0.9, nesterov=True), [p1, p2, p3])


def test_sgd_weight_decay_with_momentum(xp):
    d1 = g1 + 0.01 * P0
    buf1 = d1
    p1 = P0 - LR * buf1
    d2 = g2 + 0.01 * p1
    buf2 = 0.5 * buf1 + d2
    p2 = p1 - LR * buf2
    d3 = g3 + 0.01 * p2
    buf3 = 0.5 * buf2 + d3
    p3 = p2 - LR * buf3
    assert_steps(run_steps(xp, nn.optim.SGD, momentum=0.5, weight_decay=0.01), [p1, p2, p3])


# --- Adam and AdamW, by hand ----------------------------------------------------------------


def _adam_by_hand(weight_decay: float = 0.0, decoupled: bool = False, b1=0.9, b2=0.999, eps=1e-8):
    p, m, v, history = P0.copy(), numpy.zeros(3), numpy.zeros(3), []
    # Step 1
    p = p * (1 - LR * weight_decay) if decoupled else p
    d = g1 if decoupled else g1 + weight_decay * P0
    m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
    p = p - LR * (m / (1 - b1)) / (numpy.sqrt(v / (1 - b2)) + eps)
    history.append(p)
    # Step 2
    d = g2 if decoupled else g2 + weight_decay * p
    p = p * (1 - LR * weight_decay) if decoupled else p
    m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
    p = p - LR * (m / (1 - b1**2)) / (numpy.sqrt(v / (1 - b2**2)) + eps)
    history.append(p)
    # Step 3
    d = g3 if decoupled else g3 + weight_decay * p
    p = p * (1 - LR * weight_decay) if decoupled else p
    m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
    p = p - LR * (m / (1 - b1**3)) / (numpy.sqrt(v / (1 - b2**3)) + eps)
    history.append(p)
    return history


def test_adam_first_step_moves_every_element_by_lr():
    # With bias correction, step 1 is lr * g / (|g| + eps): a move of lr against the gradient's sign.
    numpy.testing.assert_allclose(run_steps(numpy, nn.optim.Adam, count=1)[0], P0 - LR * numpy.sign(g1), rtol=1e-7)


@pytest.mark.usefixtures("cpu_loops")
def test_adam(xp):
    assert_steps(run_steps(xp, nn.optim.Adam), _adam_by_hand())


@pytest.mark.usefixtures("cpu_loops")
def test_adam_custom_betas_and_l2_weight_decay(xp):
    options = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    assert_steps(run_steps(xp, nn.optim.Adam, **options),
                 _adam_by_hand(weight_decay=0.05, b1=0.8, b2=0.99, eps=1e-6))


@pytest.mark.usefixtures("cpu_loops")
def test_adamw_decoupled_weight_decay(xp):
    assert_steps(run_steps(xp, nn.optim.AdamW, weight_decay=0.1), _adam_by_hand(weight_decay=0.1, decoupled=True))


def test_adamw_default_weight_decay_is_pytorchs():
    assert nn.optim.AdamW([nn.Parameter(numpy.zeros(2))]).param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("optimizer_class", [nn.optim.SGD, nn.optim.Adam, nn.optim.AdamW])
def test_float32_parameters_stay_float32_and_close_to_float64(xp, optimizer_class):
    options = {"momentum": 0.9} if optimizer_class is nn.optim.SGD else {}
    single = run_steps(xp, optimizer_class, dtype=numpy.float32, **options)
    double = run_steps(xp, optimizer_class, dtype=numpy.float64, **options)
    assert_steps(single, double, rtol=1e-5)


def test_changing_lr_takes_effect_at_the_next_step():
    param = nn.Parameter(P0.copy())
    optimizer = nn.optim.SGD([param], lr=LR)
    param.grad[...] = g1
    optimizer.step()
    optimizer.lr = 0.5
    optimizer.step()
    numpy.testing.assert_allclose(param.data, P0 - LR * g1 - 0.5 * g1, rtol=1e-12)


def test_zero_grad_clears_every_parameter(xp):
    params = [nn.Parameter(xp.ones(3)), nn.Parameter(xp.ones((2, 2)))]
    for p in params:
        p.grad += 4.0
    nn.optim.SGD(params, lr=LR).zero_grad()
    assert all(not numpy.any(backend.to_numpy(p.grad)) for p in params)


# --- against torch.optim --------------------------------------------------------------------

TORCH_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.25, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, betas=(0.85, 0.98), weight_decay=0.3)),
]


@pytest.mark.parametrize("name, options", TORCH_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CONFIGS)])
def test_optimizers_match_torch_optim(name, options):
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(0)
    initial = [rng.standard_normal((3, 2)), rng.standard_normal(2)]
    ours = [nn.Parameter(array.copy()) for array in initial]
    theirs = [torch.tensor(array, requires_grad=True) for array in initial]
    our_optimizer = getattr(nn.optim, name)(ours, **options)
    their_optimizer = getattr(torch.optim, name)(theirs, **options)
    for _ in range(4):
        gradients = [numpy.sin(3 * p.data) + 0.1 for p in ours]  # depends on the current weights
        our_optimizer.zero_grad()
        their_optimizer.zero_grad()
        for p, t, g in zip(ours, theirs, gradients):
            p.grad += g
            t.grad = torch.tensor(g)
        our_optimizer.step()
        their_optimizer.step()
    for p, t in zip(ours, theirs):
        numpy.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


# --- state dicts ----------------------------------------------------------------------------

STATEFUL = [
    (nn.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (nn.optim.Adam, dict(lr=0.05, weight_decay=0.01)),
    (nn.optim.AdamW, dict(lr=0.05)),
]


def _train(optimizer, param, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        param.grad += numpy.cos(2 * param.data)
        optimizer.step()


@pytest.mark.parametrize("optimizer_class, options", STATEFUL, ids=[c.__name__ for c, _ in STATEFUL])
def test_state_dict_round_trip_continues_identically(optimizer_class, options):
    param = nn.Parameter(P0.copy())
    optimizer = optimizer_class([param], **options)
    _train(optimizer, param, 2)
    saved_state, saved_data = optimizer.state_dict(), param.data.copy()
    _train(optimizer, param, 3)

    resumed_param = nn.Parameter(saved_data)
    resumed = optimizer_class([resumed_param], lr=1.0)  # the saved lr replaces this one
    resumed.load_state_dict(saved_state)
    assert resumed.lr == options["lr"] and resumed.step_count == 2
    _train(resumed, resumed_param, 3)
    numpy.testing.assert_array_equal(resumed_param.data, param.data)


def test_state_dict_is_a_copy():
    param = nn.Parameter(P0.copy())
    optimizer = nn.optim.SGD([param], lr=LR, momentum=0.9)
    _train(optimizer, param, 1)
    saved = optimizer.state_dict()["state"][0]["momentum_buffer"].copy()
    state = optimizer.state_dict()
    _train(optimizer, param, 1)
    numpy.testing.assert_array_equal(state["state"][0]["momentum_buffer"], saved)


def test_load_state_dict_rejects_another_optimizer_type():
    state = nn.optim.SGD([nn.Parameter(P0.copy())], lr=LR).state_dict()
    with pytest.raises(ValueError, match="saved by SGD but this is Adam"):
        nn.optim.Adam([nn.Parameter(P0.copy())]).load_state_dict(state)


def test_load_state_dict_rejects_other_parameter_counts_and_shapes():
    param = nn.Parameter(P0.copy())
    optimizer = nn.optim.Adam([param])
    _train(optimizer, param, 1)
    state = optimizer.state_dict()
    with pytest.raises(ValueError, match="holds 1 parameters but this optimizer has 2"):
        nn.optim.Adam([nn.Parameter(P0.copy()), nn.Parameter(P0.copy())]).load_state_dict(state)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \(3,\) but the parameter has shape \(4,\)"):
        nn.optim.Adam([nn.Parameter(numpy.zeros(4))]).load_state_dict(state)


def test_adam_bias_correction_matches_math():
    # A constant gradient gives m_hat = g and v_hat = g², so every step moves lr * g / (|g| + eps).
    param = nn.Parameter(numpy.array([0.0]))
    optimizer = nn.optim.Adam([param], lr=0.01, eps=0.0)
    for _ in range(5):
        optimizer.zero_grad()
        param.grad += 3.0
        optimizer.step()
    assert param.data[0] == pytest.approx(-5 * 0.01, rel=1e-12)
    assert math.isclose(optimizer.state[0]["exp_avg"][0], 3.0 * (1 - 0.9**5), rel_tol=1e-12)
