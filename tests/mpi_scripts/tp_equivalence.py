"""Tensor-parallel MLP on T ranks against one process training the whole model on the same batch.

Usage: mpiexec -n N python tp_equivalence.py T. The N ranks form N/T groups of T. Every rank
builds its whole model from a seed of its own, so only the layers' broadcast can make a group
agree. After each SGD step the gathered gradients, and at the end the gathered weights, must
match the single-process model (float64, 1e-6), with and without a recomputed block. Then a
finite-difference check of one Column -> ReLU -> Row block, a checkpoint round trip and the
errors; with more ranks than T, the groups as DataParallel replicas on a global batch.
Prints one line per check on rank 0 and "rank R ok" on every rank.
"""
import os
import sys
import tempfile

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.network.training.checkpoint import read_checkpoint
from mpiprop.distributed import Communicator, DataParallel, Pipeline
from mpiprop.distributed.tensor_parallel import (
    ColumnParallelLinear, RowParallelLinear, full_state_dict, load_full_state_dict, named_split_layers,
    tensor_parallel_group,
)

IN, HIDDEN, OUT, BATCH, STEPS, LR, MOMENTUM = 6, 16, 3, 10, 3, 0.1, 0.9
TOLERANCE = 1e-6


def whole_model(seed: int) -> nn.Sequential:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)).to(dtype=numpy.float64)


def tensor_parallel_model(seed: int, group, recompute: bool = False) -> nn.Sequential:
    """Blocks (0, 2) and (4, 6) split column -> row; with `recompute`, layers 0..2 are recomputed."""
    whole = whole_model(seed)
    layers = [ColumnParallelLinear(whole[0], group), whole[1], RowParallelLinear(whole[2], group), whole[3],
              ColumnParallelLinear(whole[4], group), whole[5], RowParallelLinear(whole[6], group)]
    if recompute:
        return nn.Sequential(nn.Recompute(*layers[:3]), *layers[3:])
    return nn.Sequential(*layers)


def batches():
    rng = numpy.random.default_rng(1234)
    for _ in range(STEPS):
        yield rng.standard_normal((BATCH, IN)), rng.standard_normal((BATCH, OUT))


def full_gradients(model) -> dict[str, numpy.ndarray]:
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    for prefix, layer in named_split_layers(model):
        grads.update({prefix + name: value for name, value in layer.full_parameters("grad").items()})
    return grads


def train(model) -> list[dict[str, numpy.ndarray]]:
    """STEPS SGD steps with momentum on the MSE loss; each step's (full) gradients."""
    optimizer = nn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn, gradients = nn.MSELoss(), []
    for x, y in batches():
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        gradients.append(full_gradients(model))
        optimizer.step()
    return gradients


def assert_close(ours: dict, reference: dict, what: str) -> float:
    assert ours.keys() == reference.keys(), f"{what}: names {sorted(ours)} vs {sorted(reference)}"
    worst = 0.0
    for name in reference:
        assert ours[name].shape == reference[name].shape, f"{what} {name}: {ours[name].shape}"
        numpy.testing.assert_allclose(ours[name], reference[name], rtol=TOLERANCE, atol=TOLERANCE,
                                      err_msg=f"{what} {name}")
        worst = max(worst, float(numpy.abs(ours[name] - reference[name]).max()))
    return worst


def check_training(world, group, recompute: bool) -> None:
    model = tensor_parallel_model(seed=100 + world.rank, group=group, recompute=recompute)
    reference = whole_model(seed=100 + world.rank - group.rank)  # the group's rank 0 broadcast its weights
    assert_close(full_state_dict(model), reference.state_dict(), "initial weights")
    worst = max(assert_close(ours, theirs, f"step {step} gradient")
                for step, (ours, theirs) in enumerate(zip(train(model), train(reference))))
    worst = max(worst, assert_close(full_state_dict(model), reference.state_dict(), "trained weights"))
    moved = max(float(numpy.abs(value - whole_model(100 + world.rank - group.rank).state_dict()[name]).max())
                for name, value in reference.state_dict().items())
    assert moved > 1e3 * TOLERANCE, "training barely moved the weights; the comparison would be vacuous"
    if world.rank == 0:
        print(f"ranks={world.size} T={group.size} recompute={recompute} max_abs_diff={worst:.3e} moved={moved:.3e}",
              flush=True)


def check_data_parallel_replicas(world, group) -> None:
    """Groups side by side as data-parallel replicas (a one-stage Pipeline over the grid), each on its
    share of a global batch, equal one process on the global batch; DataParallel refuses split layers."""
    try:
        DataParallel(tensor_parallel_model(seed=30, group=group))
    except ValueError as error:
        assert "Pipeline(model, micro_batches, stages=1)" in str(error), error
    else:
        raise AssertionError("DataParallel accepted tensor-parallel layers")
    model = Pipeline(tensor_parallel_model(seed=30 + world.rank, group=group), micro_batches=2, stages=1)
    assert (model.replicas, model.tensor_size) == (world.size // group.size, group.size), model.position
    reference = whole_model(seed=30)  # rank 0's weights, taken by every replica
    mine = slice(model.replica * BATCH, (model.replica + 1) * BATCH)
    optimizer = nn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    expected = nn.optim.SGD(reference.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.MSELoss()
    rng = numpy.random.default_rng(99)
    for _ in range(STEPS):
        x = rng.standard_normal((model.replicas * BATCH, IN))
        y = rng.standard_normal((model.replicas * BATCH, OUT))
        optimizer.zero_grad(), expected.zero_grad()
        model.train_step(x[mine], y[mine], loss_fn)
        loss_fn(reference(x), y)
        reference.backward(loss_fn.backward())
        optimizer.step(), expected.step()
    whole = model.consolidated_state_dict()
    worst = 0.0
    if world.rank == 0:
        worst = assert_close(whole, reference.state_dict(), "weights trained by the replicas")
        assert not numpy.allclose(reference[0].weight.data, whole_model(seed=30)[0].weight.data), "training did not move"
        print(f"ranks={world.size} T={group.size} replicas={model.replicas} max_abs_diff={worst:.3e}", flush=True)


def check_tensor_ranks_must_draw_alike(world, group) -> None:
    """Dropout on the activations a group holds alike needs one seed over the group: else the first step raises."""
    def dropout_pipeline():
        whole = whole_model(seed=40)
        return Pipeline(nn.Sequential(ColumnParallelLinear(whole[0], group), whole[1],
                                      RowParallelLinear(whole[2], group), nn.Dropout(0.5), whole[3], whole[4]),
                        micro_batches=1, stages=1)

    x, y = numpy.ones((4, IN)), numpy.ones((4, HIDDEN))
    alike = dropout_pipeline()
    nn.manual_seed(7 + alike.replica)
    alike.train_step(x, y, nn.MSELoss())
    apart = dropout_pipeline()
    nn.manual_seed(7 + world.rank)
    try:
        apart.train_step(x, y, nn.MSELoss())
    except ValueError as error:
        assert "draw dropout masks from different seeds" in str(error) and "seed + pipe.replica" in str(error), error
    else:
        raise AssertionError("tensor ranks seeded apart were accepted")


def check_gradients_by_finite_differences(world, group, eps: float = 1e-6, per_array: int = 6) -> None:
    """Perturb one element of one rank's share at a time; that rank's loss must move by its gradient."""
    block = tensor_parallel_model(seed=5, group=group)[:3]
    x = numpy.random.default_rng(7).standard_normal((4, IN))
    dy = numpy.random.default_rng(8).standard_normal((4, HIDDEN))
    y, cache = block.forward(x)
    dx = block.backward(dy, cache)

    def objective() -> float:
        return float((block.forward(x)[0] * dy).sum())

    worst = 0.0
    checks = [("input", x, dx, None)] + [(name, p.data, p.grad, owner) for owner in range(group.size)
                                         for name, p in block.named_parameters()]
    for name, array, analytic, owner in checks:
        chooser = numpy.random.default_rng(len(name))
        for flat in chooser.choice(array.size, size=min(per_array, array.size), replace=False):
            index = numpy.unravel_index(int(flat), array.shape)
            mine = owner is None or owner == group.rank
            original = float(array[index])
            array[index] = original + eps * mine
            plus = objective()
            array[index] = original - eps * mine
            minus = objective()
            array[index] = original
            if mine:
                numeric = (plus - minus) / (2 * eps)
                error = abs(numeric - float(analytic[index]))
                assert error <= 1e-6 + 1e-4 * abs(numeric), f"{name}{index} on rank {group.rank}: " \
                    f"analytic {float(analytic[index])} vs numeric {numeric}"
                worst = max(worst, error)
    if world.rank == 0:
        print(f"T={group.size} finite differences max_abs_error={worst:.3e}", flush=True)


def check_checkpoint_round_trip(world, group) -> None:
    trained = tensor_parallel_model(seed=20, group=group)
    train(trained)
    state = full_state_dict(trained)
    directory = world.bcast_object(tempfile.mkdtemp() if world.rank == 0 else None)
    path = os.path.join(directory, "tp.ckpt")
    if world.rank == 0:
        whole = whole_model(seed=0)
        whole.load_state_dict(state)
        nn.save_checkpoint(path, whole)
    world.barrier()
    fresh = tensor_parallel_model(seed=21, group=group)
    load_full_state_dict(fresh, read_checkpoint(path)["model"])
    assert_close(full_state_dict(fresh), state, "reloaded weights")
    for (name, p), (_, q) in zip(fresh.named_parameters(), trained.named_parameters()):
        numpy.testing.assert_array_equal(p.data, q.data, err_msg=name)
    world.barrier()
    if world.rank == 0:
        os.remove(path)
        os.rmdir(directory)
        print(f"T={group.size} checkpoint round trip ok", flush=True)


def check_errors(world, group) -> None:
    try:
        ColumnParallelLinear(nn.Linear(4, group.size + 1), group)
    except ValueError as error:
        assert f"{group.size + 1} output columns" in str(error) and f"over {group.size} ranks" in str(error), error
    else:
        raise AssertionError("an indivisible width was accepted")
    try:
        tensor_parallel_group(world.size + 1, world)
    except ValueError as error:
        assert f"does not divide the {world.size} ranks" in str(error), error
    else:
        raise AssertionError("an indivisible group size was accepted")
    row = RowParallelLinear(nn.Linear(4 * group.size, 2, dtype=numpy.float64), group)
    try:
        row.forward(numpy.zeros((3, 4 * group.size)))
    except ValueError as error:
        assert "(batch, 4)" in str(error), error
    else:
        raise AssertionError("a whole input was accepted by the row-parallel layer")


def main() -> None:
    world = Communicator(MPI.COMM_WORLD)
    group = tensor_parallel_group(int(sys.argv[1]), world)
    assert world.size == 1 or group.size > 1
    for recompute in (False, True):
        check_training(world, group, recompute)
    if world.size > group.size:
        check_data_parallel_replicas(world, group)
    check_tensor_ranks_must_draw_alike(world, group)
    check_gradients_by_finite_differences(world, group)
    check_checkpoint_round_trip(world, group)
    check_errors(world, group)
    print(f"rank {world.rank} ok", flush=True)


if __name__ == "__main__":
    main()
