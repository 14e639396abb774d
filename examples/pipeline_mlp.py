"""Train an MLP on scikit-learn's digits with its layers split across ranks (pipeline parallelism).

    mpiexec -n 2 python examples/pipeline_mlp.py                          # 2 stages, 1F1B
    mpiexec -n 4 python examples/pipeline_mlp.py --schedule zb-h1         # 4 stages, zero-bubble
    mpiexec -n 4 python examples/pipeline_mlp.py --replicas 2             # 2 stages x 2 data-parallel replicas
    mpiexec -n 2 python examples/pipeline_mlp.py --checkpoint digits_pipe.npz
    python examples/pipeline_mlp.py                                       # one rank: a single-stage pipeline

Every rank builds the same model; the pipeline keeps one stage per rank. The input batch
is read on the first stage and the labels on the last. With --replicas R the ranks form
R pipelines, each training on its share of every batch, with gradients averaged across
replicas. The Trainer drives it as it drives any layout (one JSON line of metrics per
epoch); the checkpoint holds the whole model, loadable into the plain Sequential with
`mpiprop.network.training.checkpoint.load_checkpoint`. The last line printed is test_accuracy=<float>.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy

import mpiprop.network as nn
from mpiprop import distributed
from mpiprop.distributed import Pipeline
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.distributed.pipeline.schedule_registry import schedule_names
from mpiprop.network.data.datasets import load_digits
from mpiprop.network.data.preprocessing import Standardizer, train_val_split


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
    parser.add_argument("--checkpoint", help="write the whole model (and the training state) to this file each epoch")
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
    distributed.start()  # the job's guards, before anything can fail on one rank only
    world_size = distributed.size()
    if args.replicas < 1 or world_size % args.replicas:
        raise SystemExit(f"--replicas {args.replicas} must divide the {world_size} ranks")
    if args.batch_size % args.replicas:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {args.replicas} replicas")
    nn.manual_seed(args.seed)
    pipe = Pipeline(build_model(args.hidden), args.micro_batches, args.schedule, stages=world_size // args.replicas)
    (x_train, y_train), (x_test, y_test) = load_data()
    shards = {"rank": pipe.replica, "world_size": pipe.replicas}
    train_loader = DataLoader(ArrayDataset(x_train, y_train), args.batch_size // args.replicas, shuffle=True,
                              drop_last=True, seed=args.seed, **shards)
    trainer = nn.Trainer(pipe, nn.CrossEntropyLoss(), nn.optim.SGD(pipe.parameters(), lr=args.lr, momentum=0.9),
                         checkpoint_path=args.checkpoint, progress=False)
    trainer.fit(train_loader, args.epochs)
    accuracy = trainer.evaluate(DataLoader(ArrayDataset(x_test, y_test), len(x_test), uneven="keep",
                                           **shards))["accuracy"]
    if trainer.is_main:
        print(f"test_accuracy={accuracy:.4f}", flush=True)
    return accuracy


if __name__ == "__main__":
    main()
