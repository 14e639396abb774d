"""Train a character-level GPT on the Python standard library's own source files, then print a sample.

    python examples/train_gpt.py                       # about 140 s of one CPU core: validation loss ~1.8 nats
    python examples/train_gpt.py --text input.txt      # any other text file
    mpiexec -n 2 python examples/train_gpt.py          # data parallel: the same global batch over 2 ranks
    mpiexec -n 2 python examples/train_gpt.py --zero 2 # ... with the optimizer state and gradients sharded
    mpiexec -n 4 python examples/train_gpt.py --pipeline-stages 2   # 2 replicas of a 2-stage pipeline
    python examples/train_gpt.py --recompute           # each block half recomputed in backward
    mpiexec -n 2 python examples/train_gpt.py --tensor-parallel 2   # each block split over 2 ranks (Megatron)
    mpiexec -n 2 python examples/train_gpt.py --tensor-parallel 2 --sequence-parallel   # ... norms on 1/2 the rows
    mpiexec -n 8 python examples/train_gpt.py --tensor-parallel 2 --pipeline-stages 2   # 2 x 2 x 2 (3-D)

The text is found at run time on every machine with Python: the .py files directly inside the
standard library's folder (os.path.dirname(os.__file__)), in sorted order, joined up to --max-chars
characters. The last --val-fraction of it is held out for validation. Each epoch line shows the
training and validation losses (nats per character) and tokens/s; the run's last line on stderr
says what ended it, and a generated sample follows. For comparison, the first line gives the
unigram entropy: the loss of a model that knows only how often each character occurs.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from typing import Any, Sequence

import numpy

from mpiprop import distributed
import mpiprop.network as nn
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.models.gpt import generate
from mpiprop.network.models.next_token_loss import NextTokenLoss
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, LinearWarmup


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", help="train on this text file instead of the standard library's source")
    parser.add_argument("--max-chars", type=int, default=2_000_000, help="characters of text to use (default 2e6)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the text held out (default 0.1)")
    parser.add_argument("--context", type=int, default=64, help="characters the model reads at once (default 64)")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (default 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads per block (default 4)")
    parser.add_argument("--embed-dim", type=int, default=128, help="width of the residual stream (default 128)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout probability (default 0)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of --windows random windows each (default 5)")
    parser.add_argument("--windows", type=int, default=3200,
                        help="random training windows drawn for each epoch's data set (default 3200)")
    parser.add_argument("--val-windows", type=int, default=128, help="validation windows (default 128)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="windows per batch over all ranks; each of N ranks takes 1/N (default 32)")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate of AdamW (default 5e-3)")
    parser.add_argument("--min-lr", type=float, default=3e-4, help="learning rate at the end (default 3e-4)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up steps (default 50)")
    parser.add_argument("--weight-decay", type=float, default=0.1,
                        help="decoupled weight decay of matrices; biases and norms get none (default 0.1)")
    parser.add_argument("--clip", type=float, default=1.0, help="clip the gradients' global norm to this (default 1)")
    parser.add_argument("--sample-chars", type=int, default=300, help="characters to generate at the end (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data, dropout and sampling")
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")
    parser.add_argument("--pipeline-stages", type=int, default=1,
                        help="cut the model into this many pipeline stages; it must divide the ranks, the rest "
                             "are data-parallel replicas of the pipeline (default 1: data parallel only)")
    parser.add_argument("--micro-batches", type=int, default=4,
                        help="micro-batches per batch in a pipeline (default 4)")
    parser.add_argument("--schedule", default="1f1b", help="pipeline schedule: gpipe, 1f1b, ... (default 1f1b)")
    parser.add_argument("--zero", type=int, choices=(0, 1, 2), default=0,
                        help="data parallel with sharded optimizer state (1) and gradients (2) (default 0)")
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="T",
                        help="split each stage over T ranks: attention heads, MLPs and the vocabulary (default 1)")
    parser.add_argument("--sequence-parallel", action="store_true",
                        help="with --tensor-parallel, run the LayerNorms, dropout and residual sums on 1/T of the "
                             "rows each (Megatron's sequence parallelism)")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute each block half's activations in backward instead of keeping them")
    return parser.parse_args(argv)


def standard_library_text(max_chars: int) -> str:
    """The .py files directly inside the standard library's folder, sorted by name, joined up to `max_chars`."""
    folder = os.path.dirname(os.__file__)
    parts, total = [], 0
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
        parts.append(text[:max_chars - total])
        total += len(parts[-1])
        if total >= max_chars:
            break
    return "".join(parts)


def load_text(path: str | None, max_chars: int) -> str:
    """The text to train on: the file at `path`, else the standard library's source; at most `max_chars` characters.

    Raises:
        SystemExit: when the text is too short to train on.
    """
    if path is None:
        text = standard_library_text(max_chars)
    else:
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read(max_chars)
    if len(text) < 1000:
        raise SystemExit(f"the text has {len(text)} characters; give at least 1000 (--text FILE)")
    return text


class CharTokenizer:
    """One id per distinct character of a text, in sorted order."""

    def __init__(self, chars: str):
        self.chars = chars

    @classmethod
    def of(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> numpy.ndarray:
        lookup = {char: index for index, char in enumerate(self.chars)}
        return numpy.array([lookup[char] for char in text], dtype=numpy.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split_ids(ids: numpy.ndarray, val_fraction: float, context: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The text's ids cut into a training part and the last `val_fraction` for validation.

    Raises:
        SystemExit: when either part is shorter than one window.
    """
    cut = int(len(ids) * (1.0 - val_fraction))
    train, val = ids[:cut], ids[cut:]
    if min(len(train), len(val)) <= context + 1:
        raise SystemExit(f"the training ({len(train)}) and validation ({len(val)}) parts must each be longer than "
                         f"--context {context} + 1 characters; use more text or a different --val-fraction")
    return train, val


def random_windows(ids: numpy.ndarray, context: int, count: int, seed: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """`count` windows at random places: inputs (count, context) and targets, the same shifted by one."""
    starts = numpy.random.default_rng(seed).integers(0, len(ids) - context - 1, size=count)
    return _windows_at(ids, starts, context)


def evenly_spaced_windows(ids: numpy.ndarray, context: int, count: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Up to `count` windows spread evenly over `ids` (the same every run): inputs and shifted targets."""
    starts = numpy.unique(numpy.linspace(0, len(ids) - context - 1, num=count).astype(numpy.int64))
    return _windows_at(ids, starts, context)


def _windows_at(ids: numpy.ndarray, starts: numpy.ndarray, context: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    rows = starts[:, None] + numpy.arange(context + 1)
    windows = ids[rows]
    return numpy.ascontiguousarray(windows[:, :-1]), numpy.ascontiguousarray(windows[:, 1:])


def unigram_entropy(ids: numpy.ndarray, vocab_size: int) -> float:
    """-sum p log p of the ids' frequencies, in nats: the loss of predicting each character by its frequency alone."""
    p = numpy.bincount(ids, minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-(p * numpy.log(p)).sum())


def build_model(vocab_size: int, args: argparse.Namespace) -> nn.Sequential:
    """The GPT the flags describe (see `mpiprop.network.gpt`)."""
    return nn.gpt(vocab_size, args.context, args.layers, args.heads, args.embed_dim, args.dropout)


def with_recompute(model: nn.Sequential) -> nn.Sequential:
    """`model` with each residual half (attention, MLP) wrapped in nn.Recompute; names are unchanged."""
    layers = list(model.layers)
    return nn.Sequential(layers[0], *[nn.Recompute(half) for half in layers[1:-2]], *layers[-2:])


def build_strategy(model: nn.Sequential, args: argparse.Namespace, world_size: int) -> Any:
    """The model alone, DataParallel (sharded with --zero) or a pipeline (replicated over the other ranks),
    each stage split over --tensor-parallel ranks (`tensor_parallel_gpt`).

    Raises:
        SystemExit: when stages x tensor ranks do not divide the ranks, the heads do not split, or --zero is
            asked with either.
    """
    if args.tensor_parallel < 1 or args.heads % args.tensor_parallel:
        raise SystemExit(f"--heads {args.heads} must be a multiple of --tensor-parallel {args.tensor_parallel}")
    if args.pipeline_stages > 1 or args.tensor_parallel > 1:
        model_ranks = args.pipeline_stages * args.tensor_parallel
        if world_size % model_ranks:
            raise SystemExit(f"--pipeline-stages {args.pipeline_stages} x --tensor-parallel {args.tensor_parallel} "
                             f"must divide the {world_size} ranks")
        if args.zero:
            raise SystemExit("--zero shards a data-parallel optimizer; leave it out with --pipeline-stages "
                             "or --tensor-parallel")
        if args.tensor_parallel > 1:
            model = distributed.tensor_parallel_gpt(model, distributed.tensor_parallel_group(args.tensor_parallel),
                                                    sequence_parallel=args.sequence_parallel)
        return distributed.Pipeline(model, args.micro_batches, args.schedule, stages=args.pipeline_stages)
    if world_size > 1 or args.zero:
        return distributed.DataParallel(model, shard_optimizer_state=args.zero)
    return model


def parameter_groups(named_parameters: Any, weight_decay: float) -> list[dict]:
    """Matrices (Linear weights, embeddings) decay; biases and LayerNorm gains do not, as in nanoGPT.
    A tied weight appears under two names and joins its group once."""
    unique = {id(p): p for _, p in named_parameters}
    decay = [p for p in unique.values() if len(p.shape) >= 2]
    no_decay = [p for p in unique.values() if len(p.shape) < 2]
    return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}) if group["params"]]


class TokensPerSecond(nn.callbacks.Callback):
    """Adds "tokens_per_s" (training tokens over all ranks per second of the epoch's training) to each epoch record."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self._started, self._steps, self._trained = time.perf_counter(), 0, 0.0

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._started, self._steps = time.perf_counter(), 0

    def on_batch_end(self, trainer: Any, step: int, loss: float) -> None:
        self._steps += 1
        self._trained = time.perf_counter() - self._started

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, float]) -> None:
        if self._steps:
            record["tokens_per_s"] = round(self._steps * self.tokens_per_step / self._trained, 1)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns {"val_loss", "unigram_entropy", "sample", "history"}."""
    args = parse_args(argv)
    distributed.start()  # the job's guards, before anything can fail on one rank only
    world_size, rank = distributed.size(), distributed.rank()
    replicas = world_size // max(1, args.pipeline_stages * args.tensor_parallel)
    if args.batch_size % max(1, replicas):
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {replicas} data-parallel replicas")
    nn.manual_seed(args.seed)
    text = load_text(args.text, args.max_chars)
    tokenizer = CharTokenizer.of(text)
    train_ids, val_ids = split_ids(tokenizer.encode(text), args.val_fraction, args.context)
    entropy = unigram_entropy(train_ids, tokenizer.vocab_size)
    say = print if rank == 0 else (lambda *_, **__: None)
    say(f"text: {len(text)} characters, {tokenizer.vocab_size} distinct; unigram entropy {entropy:.3f} nats",
        flush=True)
    model = build_model(tokenizer.vocab_size, args)
    if args.recompute:
        model = with_recompute(model)
    strategy = build_strategy(model, args, world_size)
    shard, shards = getattr(getattr(strategy, "ranks", None), "data_shard", (0, 1))
    if shards > 1:
        nn.manual_seed(args.seed + shard)  # independent dropout masks per replica, alike over a pipeline's stages
    shards = {"rank": shard, "world_size": shards}
    train = ArrayDataset(*random_windows(train_ids, args.context, args.windows, args.seed))
    val = ArrayDataset(*evenly_spaced_windows(val_ids, args.context, args.val_windows))
    train_loader = DataLoader(train, args.batch_size // shards["world_size"], shuffle=True, drop_last=True,
                              seed=args.seed, **shards)
    val_loader = DataLoader(val, 64, uneven="keep", **shards)
    steps = args.epochs * len(train_loader)
    warmup = max(1, min(args.warmup, steps - 1))
    schedule = LinearWarmup(CosineAnnealingLR(args.lr, total=max(steps - warmup, 1), min_lr=args.min_lr),
                            warmup_steps=warmup, start_factor=0.0)
    groups = parameter_groups(strategy.named_parameters(), args.weight_decay)
    if args.zero:
        optimizer = strategy.optimizer(nn.optim.AdamW, groups, lr=args.lr, betas=(0.9, 0.95))
    else:
        optimizer = nn.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    tensor_comm = getattr(strategy, "tensor_comm", None)
    loss_fn = NextTokenLoss() if tensor_comm is None else distributed.VocabParallelCrossEntropy(tensor_comm)
    trainer = nn.Trainer(strategy, loss_fn, optimizer, lr_schedule=schedule, clip_grad_norm=args.clip,
                         callbacks=[TokensPerSecond(args.batch_size * args.context)], quiet=args.quiet,
                         progress=False)
    history = trainer.fit(train_loader, args.epochs, val_loader)
    val_loss = history[-1]["val_loss"] if history else math.nan
    sample = ""
    if hasattr(strategy, "consolidated_state_dict"):  # rank 0 holds only its stage's trained layers
        whole = strategy.consolidated_state_dict()
        if rank == 0:
            model.load_state_dict(whole)
    if rank == 0:
        prompt = tokenizer.encode("def ")[None, :] if set("def ") <= set(tokenizer.chars) else train_ids[None, :1]
        out = generate(model, prompt, args.sample_chars, context_length=args.context, temperature=0.8,
                       generator=numpy.random.default_rng(args.seed))
        sample = tokenizer.decode(out[0])
        print(f"val_loss={val_loss:.4f} unigram_entropy={entropy:.4f}", flush=True)
        print("--- sample ---\n" + sample, flush=True)
    sys.stdout.flush()
    return {"val_loss": val_loss, "unigram_entropy": entropy, "sample": sample, "history": history}


if __name__ == "__main__":
    main()
