"""Train an MLP classifier on scikit-learn's handwritten digits; the last line printed is test_accuracy=<float>.

    python examples/train_digits.py                       # defaults: about 0.98 in a few seconds
    python examples/train_digits.py --epochs 40 --checkpoint digits.npz --metrics-out digits.jsonl
    python examples/train_digits.py --epochs 60 --checkpoint digits.npz --resume digits.npz
    mpiexec -n 2 python examples/train_digits.py          # data parallel: same global batch, same accuracy
    mpiexec -n 2 python examples/train_digits.py --pipeline-stages 2                  # a 2-stage pipeline
    mpiexec -n 4 python examples/train_digits.py --pipeline-stages 2                  # 2 stages x 2 replicas
    mpiexec -n 4 python examples/train_digits.py --tensor-parallel 2                  # 2 replicas x 2 tensor ranks
    mpiexec -n 8 python examples/train_digits.py --pipeline-stages 2 --tensor-parallel 2   # 2 x 2 x 2 (3-D)

Every layout prints the same metrics lines and writes the same checkpoint (the whole model
under its full parameter names), so `--resume` continues a run in any other layout.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from mpiprop import distributed
import mpiprop.network as nn
from mpiprop.network.training.callbacks import EarlyStopping
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.data.datasets import load_digits
from mpiprop.network.data.preprocessing import Standardizer, train_val_split
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, LinearWarmup

TEST_FRACTION = 0.2
VAL_FRACTION = 0.15


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="total epochs (default 40)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="samples per batch over all ranks; each of N ranks takes 1/N (default 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate of SGD with momentum (default 0.05)")
    parser.add_argument("--weight-decay", type=float, default=1e-4,
                        help="weight decay of the weights; biases get none (default 1e-4)")
    parser.add_argument("--label-smoothing", type=float, default=0.1,
                        help="share of each label spread over all classes (default 0.1)")
    parser.add_argument("--hidden", type=int, default=128, help="width of the two hidden layers (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, dropout and shuffling")
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default 10)")
    parser.add_argument("--checkpoint", help="write a checkpoint to this file after every epoch")
    parser.add_argument("--checkpoint-every", type=int, help="also write the checkpoint every this many steps")
    parser.add_argument("--resume", help="resume from this checkpoint (written with --checkpoint)")
    parser.add_argument("--metrics-out", help="write one JSON line of metrics per epoch to this file")
    parser.add_argument("--plot", help="save a PNG of the training curves to this file (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="when stderr is not a terminal (under mpiexec), print a progress line at most this "
                             "often; 0: after every batch (default 30)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="train on the CPU (numpy) or a GPU (cupy), one GPU per local rank (default cpu)")
    parser.add_argument("--precision", choices=list(nn.PRECISIONS), default="fp32",
                        help="how products are computed; all but fp32 need --device cuda (default fp32)")
    parser.add_argument("--pipeline-stages", type=int, default=1,
                        help="ranks per pipeline; the remaining factor of the ranks are data-parallel replicas "
                             "(default 1: data parallel over all ranks)")
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="T",
                        help="ranks that split the first two Linear layers (column- then row-parallel); "
                             "replicas x stages x T ranks in all (default 1)")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per batch in a pipeline (default 4)")
    parser.add_argument("--schedule", default="1f1b", choices=["gpipe", "1f1b", "interleaved", "zb-h1"],
                        help="pipeline schedule (default 1f1b)")
    return parser.parse_args(argv)


def build_model(hidden: int, tensor_parallel: int = 1) -> nn.Sequential:
    """64 pixels -> hidden -> hidden -> 10 classes, ReLU and dropout between; with `tensor_parallel` > 1 the
    first two Linear layers are split over groups of that many ranks (column-, then row-parallel)."""
    first, second = nn.Linear(64, hidden), nn.Linear(hidden, hidden)
    if tensor_parallel > 1:
        group = distributed.tensor_parallel_group(tensor_parallel)
        first, second = distributed.ColumnParallelLinear(first, group), distributed.RowParallelLinear(second, group)
    return nn.Sequential(
        first, nn.ReLU(), nn.Dropout(0.2),
        second, nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(hidden, 10),
    )


def parameter_groups(strategy: nn.LocalStrategy, weight_decay: float) -> list[dict]:
    """Weights decay, biases do not (decaying a bias only pulls a layer's outputs towards zero)."""
    named = list(strategy.named_parameters())
    groups = [{"params": [p for name, p in named if not name.endswith("bias")], "weight_decay": weight_decay},
              {"params": [p for name, p in named if name.endswith("bias")], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def load_splits(seed: int) -> dict[str, tuple]:
    """Train/validation/test arrays, standardised with the training statistics; the test set is fixed."""
    x, y = load_digits()
    rest, test = train_val_split(x, y, TEST_FRACTION, seed=0)
    train, val = train_val_split(*rest, VAL_FRACTION, seed=seed)
    scaler = Standardizer().fit(train[0])
    return {name: (scaler.transform(part[0]), part[1]) for name, part in (("train", train), ("val", val), ("test", test))}


def make_strategy(model: nn.Sequential, args: argparse.Namespace, world_size: int):
    """The model itself on one rank, DataParallel over all ranks, or pipelines of --pipeline-stages stages
    (of --tensor-parallel ranks each)."""
    if args.pipeline_stages > 1 or args.tensor_parallel > 1:
        return distributed.Pipeline(model, args.micro_batches, args.schedule, stages=args.pipeline_stages)
    if world_size > 1:
        return distributed.DataParallel(model)  # rank 0's initial weights on every rank
    return model


def main(argv: Sequence[str] | None = None) -> float:
    """Run the example; returns the test accuracy."""
    args = parse_args(argv)
    distributed.start()  # the job's guards, before anything can fail on one rank only
    world_size = distributed.size()
    model_ranks = args.pipeline_stages * args.tensor_parallel
    if args.pipeline_stages < 1 or args.tensor_parallel < 1 or world_size % model_ranks:
        raise SystemExit(f"--pipeline-stages {args.pipeline_stages} x --tensor-parallel {args.tensor_parallel} must "
                         f"divide the {world_size} ranks")
    if args.hidden % args.tensor_parallel:
        raise SystemExit(f"--hidden {args.hidden} must be a multiple of --tensor-parallel {args.tensor_parallel}")
    replicas = world_size // model_ranks
    if args.batch_size % replicas:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {replicas} data-parallel replicas")
    nn.manual_seed(args.seed)
    splits = load_splits(args.seed)
    model = build_model(args.hidden, args.tensor_parallel)
    if args.device == "cuda":
        distributed.bind_gpu()
        model.to("cuda")
    strategy = make_strategy(model, args, world_size)
    shard, shards = (0, 1) if strategy is model else strategy.data_shard
    if shards > 1 and not isinstance(strategy, distributed.DataParallel):
        nn.manual_seed(args.seed + shard)  # independent dropout masks per pipeline replica (DataParallel's ranks
        # draw their rows of the global batch's masks from one seed)
    shards_of = {"rank": shard, "world_size": shards}
    train_loader = DataLoader(ArrayDataset(*splits["train"]), args.batch_size // shards, shuffle=True,
                              drop_last=True, seed=args.seed, **shards_of)  # whole batches cut into micro-batches
    val_loader = DataLoader(ArrayDataset(*splits["val"]), 256, uneven="keep", **shards_of)
    optimizer = nn.optim.SGD(parameter_groups(strategy, args.weight_decay), lr=args.lr, momentum=0.9, nesterov=True)
    steps = args.epochs * len(train_loader)
    warmup = min(len(train_loader), steps - 1) or 1
    schedule = LinearWarmup(CosineAnnealingLR(args.lr, total=max(steps - warmup, 1)), warmup_steps=warmup)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    trainer = nn.Trainer(strategy, loss_fn, optimizer, lr_schedule=schedule, clip_grad_norm=5.0,
                         callbacks=[EarlyStopping("val_loss", patience=args.patience)],
                         checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every,
                         metrics_path=args.metrics_out, plot_path=args.plot, quiet=args.quiet,
                         progress_every=args.progress_every, precision=args.precision)
    trainer.fit(train_loader, args.epochs, val_loader, resume_from=args.resume)
    test = trainer.evaluate(DataLoader(ArrayDataset(*splits["test"]), 256, uneven="keep", **shards_of))
    if trainer.is_main:
        print(f"test_accuracy={test['accuracy']:.4f}")
    return test["accuracy"]


if __name__ == "__main__":
    main()
