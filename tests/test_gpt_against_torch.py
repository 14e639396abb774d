"""The GPT against a PyTorch mirror loaded with its weights: outputs, 20 AdamW steps, safetensors both ways, errors."""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.models.gpt import generate
from mpiprop.network.models.next_token_loss import NextTokenLoss
from mpiprop.network.training.torch_weights import (load_safetensors, load_torch_state_dict, save_safetensors,
                                                    torch_state_dict)

torch = pytest.importorskip("torch")
tnn = torch.nn

VOCAB, CONTEXT, LAYERS, HEADS, WIDTH = 23, 8, 2, 2, 16
SIZES = (VOCAB, CONTEXT, LAYERS, HEADS, WIDTH)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mirrors(monkeypatch):
    """examples/benchmarks/torch_gpt.py, nanoGPT's model in torch with `nn.gpt`'s names (examples/ is not installed)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.torch_gpt")


def our_gpt(bias=True, seed=0):
    return nn.gpt(VOCAB, CONTEXT, LAYERS, HEADS, WIDTH, bias=bias, dtype=numpy.float64,
                  generator=numpy.random.default_rng(seed))


def ids(seed, batch=4, time=CONTEXT):
    return numpy.random.default_rng(seed).integers(0, VOCAB, size=(batch, time))


def logits_of(model, x):
    model.eval()
    return model.forward(x)[0]


def torch_logits_of(module, x):
    module.eval()
    with torch.no_grad():
        return module(torch.tensor(x)).numpy()


@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_gradients_match_the_torch_mirror(bias, mirrors):
    model = our_gpt(bias)
    reference = mirrors.mirror(model, *SIZES)
    x, y = ids(1), ids(2)
    logits = model(x)
    loss_fn = NextTokenLoss()
    loss = loss_fn(logits, y)
    model.zero_grad()
    model.backward(loss_fn.backward())
    reference_logits = reference(torch.tensor(x))
    reference_loss = tnn.functional.cross_entropy(reference_logits.reshape(-1, VOCAB), torch.tensor(y).reshape(-1))
    reference_loss.backward()
    numpy.testing.assert_allclose(logits, reference_logits.detach().numpy(), rtol=0, atol=1e-10)
    assert loss == pytest.approx(reference_loss.item(), rel=1e-12)
    torch_grads = {name: p.grad.numpy() for name, p in reference.named_parameters(remove_duplicate=False)}
    tables = ("0.wte.weight", "0.wpe.weight", f"{2 * LAYERS + 2}.weight")  # (rows, C) in both; Linear is transposed
    for name, p in model.named_parameters():
        ours_grad = p.grad.T if p.data.ndim == 2 and name not in tables else p.grad
        numpy.testing.assert_allclose(ours_grad, torch_grads[name], rtol=0, atol=1e-10, err_msg=name)


def decay_groups(named, weight_decay):
    """Matrices (Linear weights, embeddings) decay; biases and LayerNorm gains do not (nanoGPT's groups)."""
    params = list(named)
    return [{"params": [p for p in params if len(p.shape) >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if len(p.shape) < 2], "weight_decay": 0.0}]


def test_twenty_adamw_steps_give_the_same_losses_as_torch(mirrors):
    model = our_gpt()
    reference = mirrors.mirror(model, *SIZES)
    settings = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8}
    ours = nn.optim.AdamW(decay_groups(model.parameters(), 0.1), **settings)
    theirs = torch.optim.AdamW(decay_groups(reference.parameters(), 0.1), **settings)
    assert sum(len(g["params"]) for g in ours.param_groups) == sum(len(g["params"]) for g in theirs.param_groups)
    loss_fn = NextTokenLoss()
    losses, reference_losses = [], []
    for step in range(20):
        x = (ids(100 + step)[:, :1] + 2 * numpy.arange(CONTEXT)) % VOCAB  # a sequence the model can learn
        y = (x + 2) % VOCAB
        model.train()
        ours.zero_grad()
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        nn.clip_grad_norm_(model.parameters(), 1.0)
        ours.step()
        theirs.zero_grad()
        loss = tnn.functional.cross_entropy(reference(torch.tensor(x)).reshape(-1, VOCAB), torch.tensor(y).reshape(-1))
        loss.backward()
        tnn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        theirs.step()
        reference_losses.append(loss.item())
    numpy.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
    assert losses[-1] < losses[0] - 1.0
    numpy.testing.assert_allclose(logits_of(model, ids(7)), torch_logits_of(reference, ids(7)), rtol=0, atol=1e-8)


def test_safetensors_from_ours_to_torch_and_from_torch_to_ours(tmp_path, mirrors):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = our_gpt(seed=3)
    save_safetensors(model, tmp_path / "ours.safetensors")
    reference = mirrors.torch_gpt(*SIZES).double()
    reference.load_state_dict(safetensors_torch.load_file(tmp_path / "ours.safetensors"))
    numpy.testing.assert_allclose(torch_logits_of(reference, ids(4)), logits_of(model, ids(4)), rtol=0, atol=1e-12)

    other = mirrors.torch_gpt(*SIZES).double()  # torch's own initialisation
    safetensors_torch.save_model(other, tmp_path / "torch.safetensors")  # keeps one name of the tied weight
    load_safetensors(model, tmp_path / "torch.safetensors")
    numpy.testing.assert_allclose(logits_of(model, ids(5)), torch_logits_of(other, ids(5)), rtol=0, atol=1e-12)
    assert model[0].wte.weight is model[-1].weight


def test_a_torch_state_dict_of_tensors_loads_and_the_tied_weight_is_listed_under_both_names(mirrors):
    model = our_gpt(seed=4)
    reference = mirrors.torch_gpt(*SIZES).double()
    load_torch_state_dict(model, reference.state_dict())
    numpy.testing.assert_allclose(logits_of(model, ids(6)), torch_logits_of(reference, ids(6)), rtol=0, atol=1e-12)
    state = torch_state_dict(model)
    assert set(state) == set(reference.state_dict())
    numpy.testing.assert_array_equal(state["0.wte.weight"], state[f"{2 * LAYERS + 2}.weight"])
    assert state["1.1.qkv.weight"].shape == (3 * WIDTH, WIDTH) and state["1.1.qkv.weight"].flags.c_contiguous
    before = model[0].wte.weight.data.copy()
    state["0.wte.weight"] += 1  # copies: changing them leaves the model as it was
    numpy.testing.assert_array_equal(model[0].wte.weight.data, before)


def test_loading_refuses_unknown_names_wrong_shapes_and_disagreeing_tied_names():
    model = our_gpt()
    state = torch_state_dict(model)
    with pytest.raises(KeyError, match="'extra'"):
        load_torch_state_dict(model, {**state, "extra": numpy.zeros(1)})
    missing = {name: value for name, value in state.items() if name != "1.1.qkv.weight"}
    with pytest.raises(KeyError, match="1.1.qkv.weight"):
        load_torch_state_dict(model, missing)
    with pytest.raises(ValueError, match=r"'1.1.qkv.weight' has shape \(16, 48\) but the model expects \(48, 16\)"):
        load_torch_state_dict(model, {**state, "1.1.qkv.weight": state["1.1.qkv.weight"].T})
    tied = {**state, "0.wte.weight": state["0.wte.weight"] + 1}
    with pytest.raises(ValueError, match="tied weight"):
        load_torch_state_dict(model, tied)


def test_without_safetensors_the_error_names_the_extra(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install 'mpiprop\[weights\]'"):
        save_safetensors(our_gpt(), tmp_path / "x.safetensors")


def test_structure_initialisation_and_errors():
    model = nn.gpt(VOCAB, CONTEXT, 12, HEADS, 64, generator=numpy.random.default_rng(0))
    assert len(model) == 2 * 12 + 3 and model[0].wte.weight is model[-1].weight
    assert model[1][0].weight.dtype == numpy.float32
    assert len(model.parameters()) == len(list(model.named_parameters())) - 1
    qkv, proj, fc = model[1][1].qkv.weight.data, model[1][1].proj.weight.data, model[2][1].weight.data
    assert qkv.std() == pytest.approx(0.02, rel=0.05) and fc.std() == pytest.approx(0.02, rel=0.05)
    assert proj.std() == pytest.approx(0.02 / math.sqrt(24), rel=0.1)
    assert model[2][3].weight.data.std() == pytest.approx(0.02 / math.sqrt(24), rel=0.1)
    assert model[0].wte.weight.data.std() == pytest.approx(0.02, rel=0.1) and not model[1][1].qkv.bias.data.any()
    small = our_gpt()
    with pytest.raises(ValueError, match="9 tokens but the context holds 8"):
        small.forward(ids(0, time=9))
    with pytest.raises(ValueError, match=r"ids from .* to 23"):
        small.forward(numpy.full((1, 3), VOCAB))
    with pytest.raises(ValueError, match="embed_dim 10 is not divisible by num_heads 3"):
        nn.gpt(VOCAB, CONTEXT, 1, 3, 10)


def test_gradcheck_of_a_whole_tiny_gpt():
    model = nn.gpt(7, 4, 1, 2, 4, dropout=0.1, generator=numpy.random.default_rng(0))
    result = nn.gradcheck(model, numpy.random.default_rng(1).integers(0, 7, (2, 4)), check_input=False)
    assert result.worst < 1e-6


def test_generate_appends_ids_from_the_model():
    model = our_gpt()
    prompt = ids(8, batch=2, time=3)
    out = generate(model, prompt, 10, context_length=CONTEXT, top_k=1)
    assert out.shape == (2, 13) and (out[:, :3] == prompt).all()
    greedy = logits_of(model, out[:, -CONTEXT - 1:-1])[:, -1].argmax(-1)
    numpy.testing.assert_array_equal(out[:, -1], greedy)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_next_token_loss_matches_torch_with_ignored_positions(reduction):
    rng = numpy.random.default_rng(9)
    logits, target = rng.standard_normal((3, 5, 7)), rng.integers(0, 7, (3, 5))
    target[0, :2] = -1
    loss_fn = NextTokenLoss(ignore_index=-1, reduction=reduction)
    value = loss_fn(logits, target)
    grad_output = rng.standard_normal((3, 5)) if reduction == "none" else None
    grad = loss_fn.backward(grad_output=grad_output)
    tlogits = torch.tensor(logits, requires_grad=True)
    expected = tnn.functional.cross_entropy(tlogits.reshape(-1, 7), torch.tensor(target).reshape(-1),
                                            ignore_index=-1, reduction=reduction)
    if reduction == "none":
        expected = expected.reshape(3, 5)
        expected.backward(torch.tensor(grad_output))
    else:
        expected.backward()
    numpy.testing.assert_allclose(value, expected.detach().numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(grad, tlogits.grad.numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"logits \(batch, time, vocabulary\) and target ids \(batch, time\)"):
        loss_fn(logits, target[:, :4])


def test_backward_in_two_halves_gives_backwards_gradients():
    model, loss_fn = our_gpt(), NextTokenLoss()
    logits, cache = model.forward(ids(11))
    dlogits = loss_fn.backward(loss_fn.forward(logits, ids(12))[1])
    model.zero_grad()
    model.backward(dlogits, cache)
    whole = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.backward_input(dlogits, cache)
    model.backward_weight(dlogits, cache)
    for grad, p in zip(whole, model.parameters()):
        numpy.testing.assert_allclose(p.grad, grad, rtol=0, atol=1e-14)


def test_a_convolutional_model_with_batch_norm_buffers_goes_to_torch_and_back():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3)).to(dtype=numpy.float64)
    x = numpy.random.default_rng(13).standard_normal((6, 2, 5, 5))
    model(x)  # one training step moves the running statistics off their start
    reference = tnn.Sequential(tnn.Conv2d(2, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.Flatten(),
                               tnn.Linear(4 * 5 * 5, 3)).double()
    reference.load_state_dict({name: torch.tensor(value) for name, value in torch_state_dict(model).items()})
    numpy.testing.assert_allclose(torch_logits_of(reference, x), logits_of(model, x), rtol=0, atol=1e-12)
    other = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3)).to(dtype=numpy.float64)
    load_torch_state_dict(other, reference.state_dict())
    numpy.testing.assert_allclose(logits_of(other, x), logits_of(model, x), rtol=0, atol=1e-12)
