"""Train an MLP on scikit-learn's digits with its layers split across ranks (pipeline parallelism).

    mpiexec -n 2 python examples/pipeline_mlp.py                          # 2 stages, 1F1B
    mpiexec -n 4 python examples/pipeline_mlp.py --schedule zb-h1         # 4 stages, zero-bubble
    mpiexec -n 4 python examples/pipeline_mlp.py --replicas 2             # 2 stages x 2 data-parallel replicas
    mpiexec -n 2 python examples/pipeline_mlp.py --checkpoint digits_pipe.npz
    python examples/pipeline_mlp.py                                       # one rank: a single-stage pipeline

Every rank builds the same model; the pipeline keeps one stage per rank. The input batch
is read on the first stage and the labels on the last. With --replicas R the ranks form
R pipelines, each training on its share of every batch, with gradients averaged across
replicas. The checkpoint is the consolidated whole model, loadable into the plain
Sequential with `mpiprop.network.checkpoint.load_checkpoint`. The last line printed is
test_accuracy=<float>.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy

import mpiprop.network as nn
from mpiprop.distributed import Pipeline, make_grid
from mpiprop.distributed.pipeline.schedule_registry import schedule_names
from mpiprop.network.checkpoint import save_checkpoint
from mpiprop.network.datasets import load_digits
from mpiprop.network.metrics import count_correct
from mpiprop.network.preprocessing import Standardizer, train_val_split


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="1f1b", choices=schedule_names(),
                        help="pipeline schedule (default 1f1b)")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per batch (default 4)")
    parser.add_argument("--replicas", type=int, default=1, help="data-parallel pipeline replicas (default 1)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch over all replicas (default 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, momentum 0.9 (default 0.05)")
    parser.add_argument("--hidden", type=int, default=128, help="width of the hidden layers (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling")
    parser.add_argument("--checkpoint", help="write the consolidated model to this file at the end")
    return parser.parse_args(argv)


def build_model(hidden: int) -> nn.Sequential:
    """64 pixels -> three hidden ReLU layers -> 10 classes: 7 layers to spread over the stages."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def load_data() -> tuple[tuple[numpy.ndarray, numpy.ndarray], tuple[numpy.ndarray, numpy.ndarray]]:
    """Standardised (train, test) digits; the split is fixed."""
    train, test = train_val_split(*load_digits(), 0.2, seed=0)
    scaler = Standardizer().fit(train[0])
    return (scaler.transform(train[0]), train[1]), (scaler.transform(test[0]), test[1])


def main(argv: Sequence[str] | None = None) -> float:
    """Run the example; returns the test accuracy (on every rank)."""
    args = parse_args(argv)
    grid = make_grid_for(args.replicas)
    if args.batch_size % args.replicas:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {args.replicas} replicas")
    nn.manual_seed(args.seed)
    model = build_model(args.hidden)
    pipe = Pipeline(model, args.micro_batches, args.schedule, comm=grid.pipeline_comm)
    optimizer = nn.optim.SGD(pipe.parameters(), lr=args.lr, momentum=0.9)
    (x_train, y_train), (x_test, y_test) = load_data()
    share = args.batch_size // args.replicas
    for epoch in range(args.epochs):
        order = numpy.random.default_rng(args.seed + epoch).permutation(len(x_train))
        losses = []
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            rows = order[start + grid.replica * share:start + (grid.replica + 1) * share]
            optimizer.zero_grad()
            loss = pipe.train_step(x_train[rows] if pipe.is_first else None,
                                   y_train[rows] if pipe.is_last else None, nn.CrossEntropyLoss())
            grid.average_gradients(pipe.parameters())
            optimizer.step()
            losses.append(loss)
        if grid.pipeline_comm.rank == 0 and grid.replica == 0:
            print(f"epoch {epoch + 1}: train loss {numpy.mean(losses):.4f}", flush=True)
    accuracy = test_accuracy(pipe, x_test, y_test)
    if args.checkpoint:
        save_consolidated(pipe, model, args.checkpoint, grid)
    if pipe.is_last and grid.replica == 0:
        print(f"test_accuracy={accuracy:.4f}", flush=True)
    return accuracy


def make_grid_for(replicas: int):
    """The grid of pipelines; every rank of a replica is one stage."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD.Get_size()
    if replicas < 1 or world % replicas:
        raise SystemExit(f"--replicas {replicas} must divide the {world} ranks")
    return make_grid(world // replicas)


def test_accuracy(pipe: Pipeline, x: numpy.ndarray, y: numpy.ndarray) -> float:
    """Accuracy of the pipeline's predictions, computed on the last stage and shared with every rank."""
    pipe.eval()
    logits = pipe.predict(x if pipe.is_first else None)
    pipe.train()
    accuracy = count_correct(logits, y) / len(y) if pipe.is_last else None
    return pipe.comm.bcast_object(accuracy, root=pipe.num_stages - 1)


def save_consolidated(pipe: Pipeline, model: nn.Sequential, path: str, grid) -> None:
    """Gather every stage into rank 0's full model and write it as a plain-model checkpoint."""
    state = pipe.consolidated_state_dict(root=0)
    if state is not None and grid.replica == 0:
        model.load_state_dict(state)
        save_checkpoint(path, model)


if __name__ == "__main__":
    main()
