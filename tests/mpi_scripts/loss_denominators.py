"""Every layout's loss and gradients are torch's mean over the global batch, for every loss option, under mpiexec.

    mpiexec -n N python loss_denominators.py

Float64. Losses: cross-entropy with class weights and ignore_index, with ignored rows falling unevenly on the ranks
(one rank's shard all ignored), with label smoothing, MSE and BCE; shards of unequal rows. Layouts: DataParallel,
ZeRO-1, ZeRO-2 and pipeline replicas (stages=1 on 2 ranks; with 4 ranks also 2 replicas of 2 stages). Each
`train_step`'s loss and gradients must equal one process's `LocalStrategy.train_step` on the global batch within
TOLERANCE. Prints "DENOMINATOR-OK <layout> <loss> rank=R" per check.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.distributed.pipeline.pipeline import Pipeline

TOLERANCE = 1e-10
ROWS, FEATURES, CLASSES, IGNORE = 13, 5, 4, -1
WORLD = MPI.COMM_WORLD


def build_model() -> nn.Sequential:
    nn.manual_seed(7)
    return nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(),
                         nn.Linear(6, CLASSES)).to(dtype=numpy.float64)


def losses():
    """name -> (loss, targets of the global batch); ignored labels on the first rows only (the first shard's)."""
    generator = numpy.random.default_rng(11)
    labels = generator.integers(0, CLASSES, ROWS)
    labels[:4] = IGNORE
    weights = numpy.array([0.3, 2.0, 1.0, 0.7])
    targets = generator.random((ROWS, CLASSES))
    return {
        "ce-weight-ignore": (nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE), labels),
        "ce-ignore-smoothing": (nn.CrossEntropyLoss(ignore_index=IGNORE, label_smoothing=0.2), labels),
        "ce-weight": (nn.CrossEntropyLoss(weight=weights), numpy.abs(labels)),
        "mse": (nn.MSELoss(), targets),
        "bce": (nn.BCEWithLogitsLoss(), targets),
    }


def reference(loss_fn, x, y) -> tuple[float, dict[str, numpy.ndarray]]:
    model = build_model()
    local = nn.LocalStrategy(model)
    loss = local.train_step(x, y, loss_fn)
    return loss, {name: p.grad.copy() for name, p in model.named_parameters()}


def shard(rows: numpy.ndarray, share: int, shares: int) -> numpy.ndarray:
    """Uneven shards: the first gets 4 rows (all ignored for the ignoring losses), the others split the rest."""
    if shares == 1:
        return rows
    return [rows[:4]] + list(numpy.array_split(rows[4:], shares - 1))


def check(layout: str, strategy, share: int, shares: int) -> None:
    generator = numpy.random.default_rng(3)
    x = generator.standard_normal((ROWS, FEATURES))
    for name, (loss_fn, y) in losses().items():
        expected_loss, expected = reference(loss_fn, x, y)
        mine = shard(numpy.arange(ROWS), share, shares)[share]
        strategy.zero_grad()
        loss = strategy.train_step(x[mine], y[mine], loss_fn)
        assert abs(loss - expected_loss) < TOLERANCE, (layout, name, WORLD.rank, loss, expected_loss)
        for param_name, p in strategy.named_parameters():
            if getattr(strategy, "shard_optimizer_state", 0) == 2 and strategy.owner_of[id(p)] != WORLD.rank:
                continue  # under ZeRO-2 a rank keeps its own parameters' gradients only
            error = float(numpy.abs(p.grad - expected[param_name]).max())
            assert error < TOLERANCE, (layout, name, WORLD.rank, param_name, error)
        print(f"DENOMINATOR-OK {layout} {name} rank={WORLD.rank}", flush=True)


def main() -> None:
    for layout, zero in (("data-parallel", 0), ("zero1", 1), ("zero2", 2)):
        dp = DataParallel(build_model(), shard_optimizer_state=zero, bucket_cap_mb=200 / 2**20)
        dp.optimizer(nn.optim.SGD, lr=0.1)  # ZeRO shards the state of an optimizer made by the strategy
        check(layout, dp, WORLD.rank, WORLD.size)
    stage_counts = [1] + ([2] if WORLD.size % 4 == 0 else [])
    for stages in stage_counts:
        pipe = Pipeline(build_model(), micro_batches=2, stages=stages)
        replica, replicas = pipe.data_shard
        check(f"pipeline-stages={stages}", pipe, replica, replicas)


if __name__ == "__main__":
    main()
