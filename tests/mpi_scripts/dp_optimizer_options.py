"""Optimizer options under DataParallel on N ranks, against PyTorch training on the global batch.

A trunk feeds one of two heads; which head a rank's rows go through changes per step, so a
head's parameters get a gradient on every rank, on some ranks or on none. With
zero_grad(set_to_none=True) a parameter that got a gradient on no rank must stay as it is (no
momentum, weight decay or Adam step), one that got one on some rank must be updated: exactly
what torch.optim does with the gradients of the mean loss over all ranks' rows. The optimizer
has parameter groups (no weight decay on biases) and a per-group schedule. Also checks that a
BatchNorm1d with momentum=None keeps rank 0's batch counter on every rank. Prints
"<optimizer> ranks=N max_abs_diff=..." on rank 0 and "rank R ok" on every rank.
"""
import numpy
import torch
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.network.layers.layer import Layer
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, set_lr

IN, HIDDEN, CLASSES, PER_RANK, STEPS = 6, 5, 3, 4, 5
LR = 0.1
TOLERANCE = 1e-5
OPTIMIZERS = {
    "SGD": dict(lr=LR, momentum=0.9, weight_decay=0.05),
    "AdamW": dict(lr=LR, weight_decay=0.1, amsgrad=True),
}


def head_of(step: int, rank: int, size: int) -> str:
    """Step 0: all ranks use head a; 1: rank 0 uses b; 2: all use b; 3: the last rank uses a; 4: all use a."""
    return {0: "a", 1: "b" if rank == 0 else "a", 2: "b", 3: "a" if rank == size - 1 else "b", 4: "a"}[step]


class TwoHeads(Layer):
    """trunk -> tanh -> head a or head b; `route` picks the head for the next forward."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head_a, self.head_b = nn.Linear(IN, HIDDEN), nn.Linear(HIDDEN, CLASSES), nn.Linear(HIDDEN, CLASSES)
        self.route = "a"

    def forward(self, x):
        h, trunk_cache = self.trunk.forward(x)
        t = numpy.tanh(h)
        head = self.head_a if self.route == "a" else self.head_b
        y, head_cache = head.forward(t)
        return y, (head, trunk_cache, t, head_cache)

    def backward(self, dy, cache):
        head, trunk_cache, t, head_cache = cache
        dt = head.backward(dy, head_cache)
        return self.trunk.backward(dt * (1 - t * t), trunk_cache)


def groups(named):
    named = list(named)
    return [{"params": [p for name, p in named if name.endswith("weight")]},
            {"params": [p for name, p in named if name.endswith("bias")], "weight_decay": 0.0, "lr": LR / 2}]


def batches(size: int):
    rng = numpy.random.default_rng(5)
    for _ in range(STEPS):
        yield rng.standard_normal((size * PER_RANK, IN)), rng.integers(0, CLASSES, size * PER_RANK)


def train_data_parallel(name: str, world) -> list[numpy.ndarray]:
    nn.manual_seed(11)
    model = TwoHeads().to(dtype=numpy.float64)
    dp = DataParallel(model)
    optimizer = getattr(nn.optim, name)(groups(model.named_parameters()), **OPTIMIZERS[name])
    schedule = CosineAnnealingLR(LR, total=STEPS, min_lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    for step, (x, y) in enumerate(batches(world.size)):
        rows = slice(world.rank * PER_RANK, (world.rank + 1) * PER_RANK)
        model.route = head_of(step, world.rank, world.size)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(dp(x[rows]), y[rows])
        dp.backward(loss_fn.backward())
        set_lr(optimizer, schedule, step)
        optimizer.step()
    return [p.data for p in model.parameters()]


def train_torch(name: str, initial: list[numpy.ndarray], size: int) -> list[numpy.ndarray]:
    trunk_w, trunk_b, a_w, a_b, b_w, b_b = [torch.tensor(array.copy(), requires_grad=True) for array in initial]
    named = [("trunk.weight", trunk_w), ("trunk.bias", trunk_b), ("head_a.weight", a_w), ("head_a.bias", a_b),
             ("head_b.weight", b_w), ("head_b.bias", b_b)]
    optimizer = getattr(torch.optim, name)(groups(named), **OPTIMIZERS[name])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS, eta_min=0.01)
    heads = {"a": (a_w, a_b), "b": (b_w, b_b)}
    for step, (x, y) in enumerate(batches(size)):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for rank in range(size):
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            weight, bias = heads[head_of(step, rank, size)]
            t = torch.tanh(torch.tensor(x[rows]) @ trunk_w + trunk_b)
            losses.append(torch.nn.functional.cross_entropy(t @ weight + bias, torch.tensor(y[rows])))
        (sum(losses) / size).backward()
        optimizer.step()
        scheduler.step()
    return [t.detach().numpy() for _, t in named]


def check_optimizer(name: str, world) -> None:
    nn.manual_seed(11)
    initial = [p.data.copy() for p in TwoHeads().to(dtype=numpy.float64).parameters()]
    ours = train_data_parallel(name, world)
    everyone = world.gather(numpy.concatenate([p.ravel() for p in ours]), root=0)
    if world.rank == 0:
        assert all(numpy.array_equal(values, everyone[0]) for values in everyone), "ranks disagree"
        expected = train_torch(name, initial, world.size)
        difference = max(float(numpy.abs(p - q).max()) for p, q in zip(ours, expected))
        print(f"{name} ranks={world.size} max_abs_diff={difference:.3e}", flush=True)
        assert difference < TOLERANCE, f"{name}: max abs difference {difference} exceeds {TOLERANCE}"


def check_batch_counter_is_broadcast(world) -> None:
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN, momentum=None))
    model[1].num_batches_tracked[...] = world.rank + 3
    dp = DataParallel(model)
    dp.forward(numpy.ones((PER_RANK, IN), dtype=numpy.float32))
    assert int(model[1].num_batches_tracked) == 4, model[1].num_batches_tracked


def main() -> None:
    world = MPI.COMM_WORLD
    for name in OPTIMIZERS:
        check_optimizer(name, world)
    check_batch_counter_is_broadcast(world)
    print(f"rank {world.rank} ok", flush=True)


if __name__ == "__main__":
    main()
