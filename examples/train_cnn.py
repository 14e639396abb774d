"""Train a CNN on MNIST-1D (generated here) or scikit-learn's 8x8 digits; the last line is test_accuracy=<float>.

    python examples/train_cnn.py                          # MNIST-1D, the paper's CNN: about 0.93 in about a minute
    python examples/train_cnn.py --dataset digits         # a small Conv2d net on the 8x8 digits
    mpiexec -n 2 python examples/train_cnn.py             # data parallel: same global batch, same accuracy
    mpiexec -n 2 python examples/train_cnn.py --pipeline-stages 2 # a 2-stage pipeline
    python examples/train_cnn.py --epochs 5 --checkpoint cnn.npz --metrics-out cnn.jsonl

MNIST-1D (Greydanus, 2020) is generated on this machine by the `mnist1d` package's own generator
(4,000 training and 1,000 test signals of length 40, the paper's set); nothing is downloaded.
Before the test accuracy it prints the training speed in samples per second, the last training
and validation losses, and what ended the run.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy

from mpiprop import distributed
import mpiprop.network as nn
from mpiprop.network.data.datasets import load_digits, load_mnist1d
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.data.preprocessing import train_val_split
from mpiprop.network.models.cnn import digits_cnn, mnist1d_cnn
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, LinearWarmup
from mpiprop.network.training.callbacks import EarlyStopping

TEST_FRACTION = 0.2  # of the digits; MNIST-1D comes with its own test split
VAL_FRACTION = 0.1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist1d", "digits"], default="mnist1d", help="(default mnist1d)")
    parser.add_argument("--epochs", type=int, default=100, help="total epochs (default 100)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="samples per batch over all ranks; each of N ranks takes 1/N (default 100)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of Adam (default 0.01)")
    parser.add_argument("--weight-decay", type=float, default=0.3,
                        help="AdamW weight decay of the weights; biases get none (default 0.3)")
    parser.add_argument("--channels", type=int, default=25, help="channels of the MNIST-1D CNN's convolutions")
    parser.add_argument("--samples", type=int, default=5000, help="MNIST-1D signals generated, 80%% for training")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, splits and shuffling")
    parser.add_argument("--patience", type=int, default=20, help="early-stopping patience in epochs (default 20)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--checkpoint", help="write a checkpoint to this file after every epoch")
    parser.add_argument("--resume", help="resume from this checkpoint (written with --checkpoint)")
    parser.add_argument("--metrics-out", help="write one JSON line of metrics per epoch to this file")
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="when stderr is not a terminal, print a progress line at most this often (default 30)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="numpy or cupy (default cpu)")
    parser.add_argument("--pipeline-stages", type=int, default=1,
                        help="ranks per pipeline; the remaining factor of the ranks are data-parallel replicas")
    parser.add_argument("--micro-batches", type=int, default=4,
                        help="micro-batches per batch in a pipeline (default 4)")
    parser.add_argument("--schedule", default="1f1b", choices=["gpipe", "1f1b", "interleaved", "zb-h1"],
                        help="pipeline schedule (default 1f1b)")
    return parser.parse_args(argv)


def load_splits(dataset: str, samples: int, seed: int, dtype) -> dict[str, tuple]:
    """Train/validation/test arrays shaped for the model: (n, 1, 40) signals or (n, 1, 8, 8) images."""
    if dataset == "mnist1d":
        rest, test = load_mnist1d("train", num_samples=samples, dtype=dtype), load_mnist1d("test", num_samples=samples,
                                                                                          dtype=dtype)
        shape = (1, 40)
    else:
        x, y = load_digits(dtype)
        rest, test = train_val_split(x, y, TEST_FRACTION, seed=0)
        shape = (1, 8, 8)
    train, val = train_val_split(*rest, VAL_FRACTION, seed=seed)
    mean, std = train[0].mean(), train[0].std()
    return {name: (((part[0] - mean) / std).astype(dtype).reshape((-1,) + shape), part[1])
            for name, part in (("train", train), ("val", val), ("test", test))}


def build_model(args: argparse.Namespace) -> nn.Sequential:
    dtype = numpy.dtype(args.dtype)
    if args.dataset == "mnist1d":
        return mnist1d_cnn(args.channels, dtype=dtype)
    return digits_cnn(dtype=dtype)


def make_strategy(model: nn.Sequential, args: argparse.Namespace, world_size: int):
    """The model itself on one rank, DataParallel over all ranks, or pipelines of --pipeline-stages stages."""
    if args.pipeline_stages > 1:
        return distributed.Pipeline(model, args.micro_batches, args.schedule, stages=args.pipeline_stages)
    if world_size > 1:
        return distributed.DataParallel(model)  # rank 0's initial weights on every rank
    return model


def main(argv: Sequence[str] | None = None) -> float:
    """Run the example; returns the test accuracy."""
    args = parse_args(argv)
    distributed.start()  # the job's guards, before anything can fail on one rank only
    world_size = distributed.size()
    if args.pipeline_stages < 1 or world_size % args.pipeline_stages:
        raise SystemExit(f"--pipeline-stages {args.pipeline_stages} must divide the {world_size} ranks")
    replicas = world_size // args.pipeline_stages
    if args.batch_size % replicas:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {replicas} data-parallel replicas")
    nn.manual_seed(args.seed)
    splits = load_splits(args.dataset, args.samples, args.seed, numpy.dtype(args.dtype))
    model = build_model(args)
    if args.device == "cuda":
        distributed.bind_gpu()
        model.to("cuda")
    strategy = make_strategy(model, args, world_size)
    shard, shards = (0, 1) if strategy is model else strategy.data_shard
    shards_of = {"rank": shard, "world_size": shards}
    train_loader = DataLoader(ArrayDataset(*splits["train"]), args.batch_size // shards, shuffle=True,
                              drop_last=True, seed=args.seed, **shards_of)
    val_loader = DataLoader(ArrayDataset(*splits["val"]), 500, uneven="keep", **shards_of)
    named = list(strategy.named_parameters())
    groups = [{"params": [p for name, p in named if not name.endswith("bias")], "weight_decay": args.weight_decay},
              {"params": [p for name, p in named if name.endswith("bias")], "weight_decay": 0.0}]
    optimizer = nn.optim.AdamW([group for group in groups if group["params"]], lr=args.lr)
    steps = args.epochs * len(train_loader)
    warmup = min(len(train_loader), steps - 1) or 1
    schedule = LinearWarmup(CosineAnnealingLR(args.lr, total=max(steps - warmup, 1)), warmup_steps=warmup)
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), optimizer, lr_schedule=schedule,
                         callbacks=[EarlyStopping("val_loss", patience=args.patience)],
                         checkpoint_path=args.checkpoint, metrics_path=args.metrics_out, quiet=args.quiet,
                         progress_every=args.progress_every)
    start, step_before = time.perf_counter(), trainer.step
    history = trainer.fit(train_loader, args.epochs, val_loader, resume_from=args.resume)
    seconds = time.perf_counter() - start
    samples = (trainer.step - step_before) * args.batch_size
    test = trainer.evaluate(DataLoader(ArrayDataset(*splits["test"]), 500, uneven="keep", **shards_of))
    if trainer.is_main:
        ended = trainer.stop_request.why if trainer.stop_request is not None else f"all {args.epochs} epochs done"
        last = history[-1] if history else {}
        print(f"samples_per_s={samples / seconds:.0f} ({samples} samples in {seconds:.1f} s on {world_size} ranks)")
        print(f"loss={last.get('loss', float('nan')):.4f} val_loss={last.get('val_loss', float('nan')):.4f} "
              f"test_loss={test['loss']:.4f}")
        print(f"ended: {ended}")
        print(f"test_accuracy={test['accuracy']:.4f}")
    return test["accuracy"]


if __name__ == "__main__":
    main()
