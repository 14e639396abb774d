"""Model benchmarks against PyTorch eager on the CPU: the GPT's and the MNIST-1D CNN's training steps, the GPT's
model-FLOPs utilisation, its attention core at longer contexts, data parallel on 2 ranks against its ceiling, and
training both GPTs side by side.

    python examples/benchmarks/bench_models.py           # GPT step, MFU, attention, CNN, 2-rank data parallel
    python examples/benchmarks/bench_models.py --parts gpt --json gpt.json
    python examples/benchmarks/bench_models.py --parts compare-training --plot examples/benchmarks/gpt_loss_curves.png

One BLAS thread per rank (the thread variables, threadpoolctl and torch.set_num_threads(1)).
The GPT (4 blocks, 4 heads, width 128, context 64, batch 32, the character vocabulary of
examples/train_gpt.py's text) runs one training step (forward, loss, backward, AdamW) in
mpiprop and in a torch mirror holding the same weights (`torch_gpt.mirror`), on the same
batches; rounds of ours and torch's interleave, medians are compared. The model FLOPs per step
(`gpt_step_flops`) over the step time, divided by the best float32 matmul rate this machine
reaches on one thread for the model's largest product, is the CPU model-FLOPs utilisation.
The CNN part runs bench_cnn. The data-parallel part launches `mpiexec` itself: 2 ranks with
DataParallel against 2 independent ranks doing the same work with no gradient sync (the
ceiling), and beside them the same model split over the 2 ranks, tensor parallel (T=2, also with
sequence parallelism) and in 2 pipeline stages, each taking the 2 ranks' windows per step,
against the ceiling and against its own bound. The pipeline's bound is the ceiling times 1 - its
schedule's bubble; tensor parallelism's is measured: the same split with its collectives kept on
each rank (`communication_free.CommunicationFree`), which leaves the work the split itself adds
(LayerNorms and residual sums on every rank, narrower products) and takes away the communication.
The attention part times the causal attention core alone (forward and backward, 2048 tokens at
contexts 64, 256 and 1024) against torch's scaled_dot_product_attention, and in one block of
queries, to show what skipping the future's blocks saves.
`compare-training` runs examples/train_gpt.py's training (its default run unless
--epochs/--windows say otherwise) and the torch mirror from the same weights on the same batches
with the same schedule, and prints both validation losses per epoch.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.timing import medians, pin_threads, time_interleaved

pin_threads(1)  # before numpy loads its BLAS

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Iterator, Sequence  # noqa: E402

import numpy  # noqa: E402

import mpiprop.network as nn  # noqa: E402
from mpiprop.network.compute import cpu_kernels, mkl_gemm  # noqa: E402
from mpiprop.network.compute.matmul import matmul  # noqa: E402
from mpiprop.network.models.next_token_loss import NextTokenLoss  # noqa: E402

PARTS = ("gpt", "attention", "cnn", "data-parallel", "compare-training")
DEFAULT_PARTS = "gpt,attention,cnn,data-parallel"
ATTENTION_TOKENS, ATTENTION_CONTEXTS = 2048, (64, 256, 1024)
TARGETS = {"gpt_ratio": 1.0, "mfu": 0.5, "val_loss_relative_difference": 0.02}
AGREEMENT_STEPS, AGREEMENT_TOLERANCE = 2, 1e-4
WEIGHT_DECAY, BETAS = 0.1, (0.9, 0.95)


# --- counting ----------------------------------------------------------------------------------------
def gpt_step_flops(batch: int, context: int, layers: int, embed_dim: int, vocab_size: int) -> int:
    """Matrix-product FLOPs of one GPT training step (forward and backward), counted from the shapes.

    Forward, with N = batch * context tokens and C = embed_dim: per block the four Linear products
    (qkv C->3C, proj C->C, MLP C->4C and 4C->C) cost 2 N 12 C², and attention's two batched
    products (q k^T and weights @ v, over all T x T pairs, the causal mask not subtracted) cost
    2 * 2 B T² C; the tied head costs 2 N C V. Backward computes two products per forward product
    (input and weight gradients), so a step costs 3 times the forward. Elementwise work,
    softmax, norms and the optimizer are not counted.

    Args:
        batch, context, layers, embed_dim, vocab_size: B, T, L, C, V.

    Returns:
        3 * (L (24 N C² + 4 B T² C) + 2 N C V).
    """
    tokens = batch * context
    per_block = 24 * tokens * embed_dim ** 2 + 4 * batch * context ** 2 * embed_dim
    return 3 * (layers * per_block + 2 * tokens * embed_dim * vocab_size)


def largest_product(batch: int, context: int, embed_dim: int, vocab_size: int) -> tuple[int, int, int]:
    """(m, k, n) of the GPT's largest matrix product: the MLP's (B T, C) @ (C, 4C), or the head's when V > 4C."""
    return batch * context, embed_dim, max(4 * embed_dim, vocab_size)


def matmul_peak(m: int, k: int, n: int, repeats: int = 20) -> dict[str, Any]:
    """The best float32 rate (GFLOP/s, median of `repeats`) of an (m, k) @ (k, n) product on this thread.

    Tries numpy's `@`, mpiprop's `compute.matmul` (MKL where installed) and torch.mm (when installed)
    and keeps the fastest: the machine's peak for that shape.
    """
    rng = numpy.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=numpy.float32), rng.standard_normal((k, n), dtype=numpy.float32)
    candidates: dict[str, Callable[[], object]] = {"numpy": lambda: a @ b, "mpiprop": lambda: matmul(a, b)}
    try:
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        candidates["torch"] = lambda: torch.mm(ta, tb)
    except ImportError:
        pass
    seconds = medians(time_interleaved(candidates, repeats, warmup_rounds=2))
    rates = {name: 2 * m * k * n / value / 1e9 for name, value in seconds.items()}
    best = max(rates, key=rates.get)
    return {"shape": [m, k, n], "gflops": rates[best], "by": best, "all_gflops": rates}


# --- the GPT's training step, ours and torch's ---------------------------------------------------------
def character_ids(max_chars: int) -> tuple[numpy.ndarray, int]:
    """examples/train_gpt.py's text as ids, and its vocabulary size."""
    from examples import train_gpt

    text = train_gpt.load_text(None, max_chars)
    tokenizer = train_gpt.CharTokenizer.of(text)
    return tokenizer.encode(text), tokenizer.vocab_size


def gpt_batches(ids: numpy.ndarray, context: int, batch: int, count: int, seed: int) -> list[tuple]:
    from examples.train_gpt import random_windows

    x, y = random_windows(ids, context, batch * count, seed)
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(count)]


def decay_groups(parameters: Sequence[Any], dims: Callable[[Any], int]) -> list[dict]:
    """Matrices decay, vectors do not (nanoGPT's and examples/train_gpt.py's groups)."""
    return [{"params": [p for p in parameters if dims(p) >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in parameters if dims(p) < 2], "weight_decay": 0.0}]


class OurGptStep:
    """One training step of mpiprop's GPT: forward, next-token loss, backward, AdamW."""

    def __init__(self, model: nn.Sequential, lr: float):
        self.model, self.loss_fn = model, NextTokenLoss()
        unique = list({id(p): p for p in model.parameters()}.values())
        self.optimizer = nn.optim.AdamW(decay_groups(unique, lambda p: p.data.ndim), lr=lr, betas=BETAS)

    def __call__(self, x: numpy.ndarray, y: numpy.ndarray) -> float:
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.optimizer.step()
        return float(loss)


class TorchGptStep:
    """The same step in PyTorch eager on the torch mirror."""

    def __init__(self, reference: Any, lr: float):
        import torch

        self.torch, self.model = torch, reference
        self.optimizer = torch.optim.AdamW(decay_groups(list(reference.parameters()), lambda p: p.dim()), lr=lr,
                                           betas=BETAS)

    def __call__(self, x: Any, y: Any) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return loss.item()


def gpt_pair(args: argparse.Namespace, vocab_size: int) -> tuple[OurGptStep, TorchGptStep]:
    from examples.benchmarks.torch_gpt import mirror

    nn.manual_seed(args.seed)
    model = nn.gpt(vocab_size, args.context, args.layers, args.heads, args.embed_dim)
    reference = mirror(model, vocab_size, args.context, args.layers, args.heads, args.embed_dim)
    return OurGptStep(model, args.lr), TorchGptStep(reference, args.lr)


def check_gpt_agreement(ours: OurGptStep, theirs: TorchGptStep, batches: dict[str, list]) -> float:
    """The largest relative loss difference over a few steps of both.

    Raises:
        RuntimeError: when they do not compute the same training.
    """
    worst = 0.0
    for step in range(AGREEMENT_STEPS):
        a, b = ours(*batches["mpiprop"][step]), theirs(*batches["torch"][step])
        worst = max(worst, abs(a - b) / abs(b))
    if worst > AGREEMENT_TOLERANCE:
        raise RuntimeError(f"mpiprop's and torch's GPT losses differ by {worst:.3g} (relative) within "
                           f"{AGREEMENT_STEPS} steps (tolerance {AGREEMENT_TOLERANCE}); they do not train alike")
    return worst


def steps_runner(step: Callable, batches: list, steps: int) -> Callable[[], None]:
    def run() -> None:
        for index in range(steps):
            step(*batches[index % len(batches)])
    return run


def bench_gpt(args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s of both training steps, their ratio, and the model-FLOPs utilisation of each."""
    import torch

    ids, vocab_size = character_ids(args.max_chars)
    batches = {"mpiprop": gpt_batches(ids, args.context, args.batch, 4, args.seed + 1)}
    batches["torch"] = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches["mpiprop"]]
    ours, theirs = gpt_pair(args, vocab_size)
    difference = check_gpt_agreement(ours, theirs, batches)
    runners = {"mpiprop": steps_runner(ours, batches["mpiprop"], args.steps),
               "torch": steps_runner(theirs, batches["torch"], args.steps)}
    rounds = time_interleaved(runners, args.rounds, args.warmup)
    step_s = {name: value / args.steps for name, value in medians(rounds).items()}
    tokens = args.batch * args.context
    flops = gpt_step_flops(args.batch, args.context, args.layers, args.embed_dim, vocab_size)
    peak = matmul_peak(*largest_product(args.batch, args.context, args.embed_dim, vocab_size))
    return {"config": {"layers": args.layers, "heads": args.heads, "embed_dim": args.embed_dim,
                       "context": args.context, "batch": args.batch, "vocab_size": vocab_size,
                       "parameters": sum(p.data.size for p in {id(p): p for p in ours.model.parameters()}.values())},
            "tokens_per_s": {name: tokens / value for name, value in step_s.items()},
            "step_ms": {name: 1e3 * value for name, value in step_s.items()},
            "ratio": step_s["torch"] / step_s["mpiprop"],
            "best_round_ratio": min(rounds["torch"]) / min(rounds["mpiprop"]),
            "flops_per_step": flops, "matmul_peak": peak,
            "mfu": {name: flops / value / 1e9 / peak["gflops"] for name, value in step_s.items()},
            "max_loss_difference": difference}


def report_gpt(result: dict[str, Any], rounds: int) -> None:
    c = result["config"]
    print(f"\nGPT {c['layers']} blocks x {c['heads']} heads, width {c['embed_dim']}, context {c['context']}, batch "
          f"{c['batch']}, vocabulary {c['vocab_size']} ({c['parameters']} parameters), AdamW step, float32, "
          f"median of {rounds} interleaved rounds:")
    for name, value in result["tokens_per_s"].items():
        print(f"  {name:8s} {value:9.0f} tokens/s  ({result['step_ms'][name]:.1f} ms/step, "
              f"MFU {result['mfu'][name]:.3f})")
    peak = result["matmul_peak"]
    print(f"  mpiprop / torch: {result['ratio']:.3f}x (fastest rounds {result['best_round_ratio']:.3f}x; "
          f"target >= {TARGETS['gpt_ratio']})")
    print(f"  model FLOPs per step {result['flops_per_step'] / 1e9:.2f} G; float32 matmul peak "
          f"{peak['gflops']:.1f} GFLOP/s on one thread ({peak['by']}, shape {peak['shape']}); "
          f"MFU target >= {TARGETS['mfu']}")


# --- the causal attention core at longer contexts ----------------------------------------------------------
def bench_attention(args: argparse.Namespace) -> dict[str, Any]:
    """Forward and backward of the causal attention core on ATTENTION_TOKENS tokens per context: ours (in blocks of
    queries), ours in one block (the whole future computed, then masked) and torch's scaled_dot_product_attention
    (is_causal), milliseconds per step (medians of interleaved rounds) and our output's largest difference from
    torch's."""
    import torch

    from mpiprop.network.layers import attention_math

    heads, size = args.heads, args.embed_dim // args.heads
    results = {}
    for context in ATTENTION_CONTEXTS:
        batch = max(1, ATTENTION_TOKENS // context)
        rng = numpy.random.default_rng(args.seed)
        q, k, v = attention_math.split_heads(rng.standard_normal((batch, context, 3 * heads * size),
                                                                 dtype=numpy.float32), heads)
        dy = rng.standard_normal(q.shape, dtype=numpy.float32)
        tq, tk, tv = (torch.from_numpy(numpy.ascontiguousarray(part)).requires_grad_() for part in (q, k, v))

        def ours() -> numpy.ndarray:
            y, cache = attention_math.causal_attention(q, k, v)
            attention_math.causal_attention_backward(dy, cache)
            return y

        def ours_in_one_block() -> None:
            with one_query_block():
                ours()

        def theirs() -> Any:
            y = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            y.backward(torch.from_numpy(dy))
            return y

        difference = float(numpy.abs(ours() - theirs().detach().numpy()).max())
        rounds = time_interleaved({"mpiprop": ours, "mpiprop_one_block": ours_in_one_block, "torch": theirs},
                                  args.rounds, args.warmup)
        ms = {name: 1e3 * value for name, value in medians(rounds).items()}
        results[context] = {"batch": batch, "ms": ms, "ratio": ms["torch"] / ms["mpiprop"],
                            "query_blocks_speedup": ms["mpiprop_one_block"] / ms["mpiprop"],
                            "max_output_difference": difference}
    return {"heads": heads, "head_size": size, "tokens": ATTENTION_TOKENS, "contexts": results}


@contextlib.contextmanager
def one_query_block() -> Iterator[None]:
    """Inside, the attention core takes all its queries in one block, as if it had no query blocks."""
    from mpiprop.network.layers import attention_math

    saved = attention_math.QUERY_BLOCK_ROWS
    attention_math.QUERY_BLOCK_ROWS = (sys.maxsize, sys.maxsize)
    try:
        yield
    finally:
        attention_math.QUERY_BLOCK_ROWS = saved


def report_attention(result: dict[str, Any], rounds: int) -> None:
    print(f"\nCausal attention core, forward and backward, {result['tokens']} tokens, {result['heads']} heads of "
          f"{result['head_size']}, float32, median of {rounds} interleaved rounds:")
    for context, figures in result["contexts"].items():
        ms = figures["ms"]
        print(f"  context {context:5d} (batch {figures['batch']:3d}):  mpiprop {ms['mpiprop']:7.2f} ms (in one block "
              f"{ms['mpiprop_one_block']:7.2f}: the query blocks {figures['query_blocks_speedup']:.2f}x), torch "
              f"{ms['torch']:7.2f} ms: {figures['ratio']:.2f}x torch; largest output difference "
              f"{figures['max_output_difference']:.1e}")


# --- the CNN ---------------------------------------------------------------------------------------------
def bench_cnn_part(args: argparse.Namespace) -> dict[str, Any]:
    """bench_cnn's measurement (the MNIST-1D CNN against torch) with this run's rounds."""
    from examples.benchmarks import bench_cnn

    return bench_cnn.main(["--rounds", str(args.rounds), "--warmup", str(args.warmup),
                           "--steps", str(args.cnn_steps), "--batch", str(args.cnn_batch), "--seed", str(args.seed)])


# --- data parallel on 2 ranks ------------------------------------------------------------------------------
def data_parallel_worker(args: argparse.Namespace) -> None:
    """Under mpiexec: time GPT training steps on each rank, with DataParallel or (independent) without."""
    from mpi4py import MPI

    from mpiprop.distributed import DataParallel

    world = MPI.COMM_WORLD
    ids, vocab_size = character_ids(args.max_chars)
    nn.manual_seed(args.seed)
    model = nn.gpt(vocab_size, args.context, args.layers, args.heads, args.embed_dim)
    step = OurGptStep(model, args.lr)
    if world.size > 1 and args.worker == "data-parallel":
        step.model = DataParallel(model)
    batches = gpt_batches(ids, args.context, args.batch, 4, args.seed + 1 + world.rank)
    _time_on_ranks(step, batches, args, world, args.batch)


def layout_worker(args: argparse.Namespace) -> None:
    """Under mpiexec: time GPT training steps split over the ranks, tensor parallel (with or without sequence
    parallelism) or in pipeline stages.

    The model takes `ranks * batch` windows per step, the work of `ranks` data-parallel ranks.
    """
    from mpi4py import MPI

    from examples import train_gpt
    from examples.benchmarks.communication_free import CommunicationFree
    from mpiprop import distributed

    world = MPI.COMM_WORLD
    ids, vocab_size = character_ids(args.max_chars)
    nn.manual_seed(args.seed)
    model = nn.gpt(vocab_size, args.context, args.layers, args.heads, args.embed_dim)
    sequence_parallel = args.worker.startswith("sequence-parallel")
    if args.worker.endswith("-bound"):  # the same split, its collectives local: the layout's own work alone
        group = CommunicationFree(distributed.tensor_parallel_group(world.size), clone=False)
        split_model = distributed.tensor_parallel_gpt(model, group, sequence_parallel=sequence_parallel)
        strategy = distributed.Pipeline(split_model, args.micro_batches, args.schedule, stages=1)
    else:
        tensor_parallel = args.worker in ("tensor-parallel", "sequence-parallel")
        split = {"tensor_parallel": world.size if tensor_parallel else 1,
                 "pipeline_stages": world.size if args.worker == "pipeline" else 1,
                 "sequence_parallel": sequence_parallel}
        strategy = train_gpt.build_strategy(model, argparse.Namespace(
            **split, micro_batches=args.micro_batches, schedule=args.schedule, zero=False, heads=args.heads),
            world.size)
    tensor_comm = getattr(strategy, "tensor_comm", None)
    loss_fn = NextTokenLoss() if tensor_comm is None else distributed.VocabParallelCrossEntropy(tensor_comm)
    unique = list({id(p): p for p in strategy.parameters()}.values())
    optimizer = nn.optim.AdamW(decay_groups(unique, lambda p: p.data.ndim), lr=args.lr, betas=BETAS)

    def step(x: numpy.ndarray, y: numpy.ndarray) -> None:
        optimizer.zero_grad()
        strategy.train_step(x, y, loss_fn)
        optimizer.step()

    batch = world.size * args.batch
    _time_on_ranks(step, gpt_batches(ids, args.context, batch, 4, args.seed + 1), args, world, batch // world.size)


def _time_on_ranks(step: Callable, batches: list, args: argparse.Namespace, world: Any, batch_per_rank: int) -> None:
    """Warm up, time `args.steps` steps (the slowest rank's time) and print the RESULT record on rank 0."""
    from mpi4py import MPI

    from examples.benchmarks.workers import print_result

    steps_runner(step, batches, args.warmup_steps)()
    world.Barrier()
    started = time.perf_counter()
    steps_runner(step, batches, args.steps)()
    elapsed = numpy.array([time.perf_counter() - started])
    world.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
    if world.rank == 0:
        print_result({"ranks": world.size, "step_s": float(elapsed[0]) / args.steps,
                      "tokens_per_s": world.size * batch_per_rank * args.context * args.steps / float(elapsed[0])})


LAYOUTS = (("single", 1, "independent"), ("independent", None, "independent"),
           ("data_parallel", None, "data-parallel"), ("tensor_parallel", None, "tensor-parallel"),
           ("tensor_parallel_bound", None, "tensor-parallel-bound"), ("sequence_parallel", None, "sequence-parallel"),
           ("sequence_parallel_bound", None, "sequence-parallel-bound"), ("pipeline", None, "pipeline"))
MODEL_PARALLEL = ("tensor_parallel", "sequence_parallel", "pipeline")
MEASURED_BOUNDS = {"tensor_parallel": "tensor_parallel_bound", "sequence_parallel": "sequence_parallel_bound"}
LAYOUT_WORKERS = tuple(worker for name, _, worker in LAYOUTS
                       if name in MODEL_PARALLEL or name in MEASURED_BOUNDS.values())


def bench_data_parallel(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved runs of 1 rank, `--ranks` independent ranks (the ceiling) and the layouts on `--ranks`; medians.

    Every layout is compared with the ceiling and with its bound: data parallel's is the ceiling,
    the pipeline's the ceiling times (1 - its schedule's bubble, from the schedule registry's
    formula), tensor parallelism's the same split run communication-free (MEASURED_BOUNDS).
    """
    from examples.benchmarks.workers import run_worker
    from mpiprop.distributed.pipeline.schedule_registry import schedule_spec

    shared = ["--layers", str(args.layers), "--heads", str(args.heads), "--embed-dim", str(args.embed_dim),
              "--context", str(args.context), "--batch", str(args.batch), "--steps", str(args.steps),
              "--warmup-steps", str(args.warmup_steps), "--max-chars", str(args.max_chars), "--seed", str(args.seed),
              "--micro-batches", str(args.micro_batches), "--schedule", args.schedule]
    optional = {*MODEL_PARALLEL, *MEASURED_BOUNDS.values()}
    chosen = {*args.layouts, *(MEASURED_BOUNDS[name] for name in args.layouts if name in MEASURED_BOUNDS)}
    contestants = [(name, ranks or args.ranks, worker) for name, ranks, worker in LAYOUTS
                   if name not in optional or name in chosen]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in contestants}
    for round_number in range(args.rounds):
        shift = round_number % len(contestants)
        for name, ranks, worker in contestants[shift:] + contestants[:shift]:
            runs[name].append(run_worker(__file__, ranks, ["--worker", worker, *shared], timeout=args.timeout))
        print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
            f"{name} {records[-1]['tokens_per_s']:.0f} tokens/s" for name, records in runs.items()), flush=True)
    bubble = schedule_spec(args.schedule).bubble(args.ranks, args.micro_batches)

    def of(name: str, reference: str) -> float:
        return statistics.median(p["tokens_per_s"] / r["tokens_per_s"] for p, r in zip(runs[name], runs[reference]))

    layouts = [name for name in ("data_parallel", *MODEL_PARALLEL) if name in runs]
    bounds = {"data_parallel": 1.0, "pipeline": 1.0 - bubble,
              **{name: of(bound, "independent") for name, bound in MEASURED_BOUNDS.items() if name in runs}}
    return {"ranks": args.ranks, "batch_per_rank": args.batch,
            "tokens_per_s": {name: statistics.median(r["tokens_per_s"] for r in records)
                             for name, records in runs.items()},
            "of_ceiling": {name: of(name, "independent") for name in layouts},
            "bound_of_ceiling": {name: bounds[name] for name in layouts},
            "of_bound": {name: of(name, MEASURED_BOUNDS[name]) if name in MEASURED_BOUNDS
                         else of(name, "independent") / bounds[name] for name in layouts},
            "pipeline_schedule": {"name": args.schedule, "micro_batches": args.micro_batches, "bubble": bubble},
            "weak_scaling_efficiency": statistics.median(
                p["tokens_per_s"] / (args.ranks * s["tokens_per_s"]) for p, s in zip(runs["data_parallel"],
                                                                                      runs["single"]))}


def report_data_parallel(result: dict[str, Any], rounds: int) -> None:
    n, t = result["ranks"], result["tokens_per_s"]
    print(f"\nGPT on {n} ranks, one BLAS thread each, {result['batch_per_rank']} windows per rank per step, median of "
          f"{rounds} interleaved rounds (global tokens/s; of the ceiling: the median of the rounds' ratios):")
    print(f"  1 rank:                 {t['single']:9.0f}")
    print(f"  {n} independent ranks:    {t['independent']:9.0f}  (same per-rank work, no communication: the ceiling)")
    print(f"  {n} ranks data parallel:  {t['data_parallel']:9.0f}  {result['of_ceiling']['data_parallel']:.3f} of the "
          f"ceiling (bound 1), weak-scaling efficiency {result['weak_scaling_efficiency']:.3f}")
    labels = {"tensor_parallel": f"tensor parallel T={n}:", "sequence_parallel": "... sequence parallel:",
              "pipeline": f"{n} pipeline stages:"}
    for name, label in labels.items():
        if name not in t:
            continue
        if name == "pipeline":
            s = result["pipeline_schedule"]
            why = f"{s['name']}, {s['micro_batches']} micro-batches, bubble {s['bubble']:.3f}"
        else:
            why = "the same split with its collectives local, measured"
        print(f"  {label:22s}  {t[name]:9.0f}  {result['of_ceiling'][name]:.3f} of the ceiling; "
              f"{result['of_bound'][name]:.3f} of its bound ({result['bound_of_ceiling'][name]:.3f} of the ceiling: "
              f"{why})")


# --- training both GPTs side by side --------------------------------------------------------------------------
def compare_training(args: argparse.Namespace) -> dict[str, Any]:
    """examples/train_gpt.py's run, and the torch mirror trained from its initial weights on its batches.

    Returns:
        {"mpiprop": [epoch records], "torch": [epoch records], "val_loss": {...}, "relative_difference": float}.
    """
    from examples import train_gpt

    argv = ["--quiet", "--sample-chars", "0", "--seed", str(args.seed)]
    argv += [] if args.epochs is None else ["--epochs", str(args.epochs)]
    argv += [] if args.windows is None else ["--windows", str(args.windows)]
    started = time.perf_counter()
    ours = train_gpt.main(argv)["history"]
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = train_torch_like_the_example(train_gpt.parse_args(argv))
    theirs_s = time.perf_counter() - started
    final = {"mpiprop": ours[-1]["val_loss"], "torch": theirs[-1]["val_loss"]}
    return {"mpiprop": [{key: record[key] for key in ("epoch", "loss", "val_loss")} for record in ours],
            "torch": theirs, "val_loss": final, "seconds": {"mpiprop": ours_s, "torch": theirs_s},
            "relative_difference": abs(final["mpiprop"] - final["torch"]) / final["torch"],
            "example_arguments": argv}


def train_torch_like_the_example(ex: argparse.Namespace) -> list[dict[str, float]]:
    """The example's data, loader order, initial weights, AdamW groups, schedule and clipping, in torch."""
    import torch

    from examples import train_gpt
    from examples.benchmarks.torch_gpt import mirror
    from mpiprop.network.data.loader import ArrayDataset, DataLoader
    from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, LinearWarmup

    nn.manual_seed(ex.seed)
    text = train_gpt.load_text(ex.text, ex.max_chars)
    tokenizer = train_gpt.CharTokenizer.of(text)
    train_ids, val_ids = train_gpt.split_ids(tokenizer.encode(text), ex.val_fraction, ex.context)
    model = train_gpt.build_model(tokenizer.vocab_size, ex)
    reference = mirror(model, tokenizer.vocab_size, ex.context, ex.layers, ex.heads, ex.embed_dim)
    loader = DataLoader(ArrayDataset(*train_gpt.random_windows(train_ids, ex.context, ex.windows, ex.seed)),
                        ex.batch_size, shuffle=True, drop_last=True, seed=ex.seed)
    val_x, val_y = (torch.from_numpy(a) for a in train_gpt.evenly_spaced_windows(val_ids, ex.context, ex.val_windows))
    steps = ex.epochs * len(loader)
    warmup = max(1, min(ex.warmup, steps - 1))
    schedule = LinearWarmup(CosineAnnealingLR(ex.lr, total=max(steps - warmup, 1), min_lr=ex.min_lr),
                            warmup_steps=warmup, start_factor=0.0)
    groups = decay_groups(list(reference.parameters()), lambda p: p.dim())
    groups[0]["weight_decay"] = ex.weight_decay
    optimizer = torch.optim.AdamW(groups, lr=ex.lr, betas=BETAS)
    history, t = [], 0
    for epoch in range(ex.epochs):
        reference.train()
        losses = []
        for x, y in loader.batches(epoch):
            for group in optimizer.param_groups:
                group["lr"] = schedule(t)
            optimizer.zero_grad(set_to_none=True)
            loss = _torch_loss(reference, torch.from_numpy(x), torch.from_numpy(y))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), ex.clip)
            optimizer.step()
            losses.append(loss.item())
            t += 1
        reference.eval()
        with torch.no_grad():
            sums = [_torch_loss(reference, val_x[i:i + 64], val_y[i:i + 64]).item() * len(val_x[i:i + 64])
                    for i in range(0, len(val_x), 64)]
        val = sum(sums) / len(val_x)
        history.append({"epoch": epoch + 1, "loss": float(numpy.mean(losses)), "val_loss": val})
    return history


def _torch_loss(model: Any, x: Any, y: Any) -> Any:
    import torch

    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def report_training(result: dict[str, Any]) -> None:
    print(f"\nexamples/train_gpt.py {' '.join(result['example_arguments'])} against the torch mirror "
          "(same initial weights, batches, AdamW groups, schedule, clipping):")
    print("  epoch  mpiprop loss/val      torch loss/val")
    for ours, theirs in zip(result["mpiprop"], result["torch"]):
        print(f"  {ours['epoch']:5d}  {ours['loss']:.4f} / {ours['val_loss']:.4f}     "
              f"{theirs['loss']:.4f} / {theirs['val_loss']:.4f}")
    final = result["val_loss"]
    print(f"  final validation loss: mpiprop {final['mpiprop']:.4f}, torch {final['torch']:.4f}"
          f" (relative difference {result['relative_difference']:.4f}; target <= "
          f"{TARGETS['val_loss_relative_difference']}); {result['seconds']['mpiprop']:.0f} s and "
          f"{result['seconds']['torch']:.0f} s")


def plot_training(result: dict[str, Any], path: str) -> None:
    from mpiprop.network.training.plots import plot_curves

    curves = {}
    for name in ("mpiprop", "torch"):
        epochs = [record["epoch"] for record in result[name]]
        curves[f"{name} train"] = (epochs, [record["loss"] for record in result[name]])
        curves[f"{name} validation"] = (epochs, [record["val_loss"] for record in result[name]])
    plot_curves(curves, path, xlabel="epoch", ylabel="loss (nats per character)",
                title="character GPT: mpiprop vs torch, same weights and batches",
                dashed=[label for label in curves if label.startswith("torch")])


# --- driver ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=DEFAULT_PARTS,
                        help=f"comma-separated, among {', '.join(PARTS)} (default {DEFAULT_PARTS})")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="GPT windows per step (per rank in data parallel)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-chars", type=int, default=2_000_000, help="characters of the example's text")
    parser.add_argument("--steps", type=int, default=5, help="GPT steps per timed round (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; medians are reported (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of each data-parallel run")
    parser.add_argument("--cnn-steps", type=int, default=50)
    parser.add_argument("--cnn-batch", type=int, default=128)
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel runs (default 2)")
    parser.add_argument("--layouts", default="tensor_parallel,sequence_parallel,pipeline",
                        help="the model-parallel layouts run beside data parallel: tensor_parallel, "
                             "sequence_parallel (tensor parallel with sequence parallelism), pipeline (default all)")
    parser.add_argument("--micro-batches", type=int, default=4, help="pipeline micro-batches per step (default 4)")
    parser.add_argument("--schedule", default="1f1b", help="pipeline schedule (default 1f1b)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a data-parallel run is stopped")
    parser.add_argument("--epochs", type=int, help="compare-training: the example's --epochs (default: its own)")
    parser.add_argument("--windows", type=int, help="compare-training: the example's --windows (default: its own)")
    parser.add_argument("--plot", help="compare-training: write the loss curves to this PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=sorted({worker for _, _, worker in LAYOUTS}),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.part_list = [part.strip() for part in args.parts.split(",") if part.strip()]
    args.layouts = [layout.strip() for layout in args.layouts.split(",") if layout.strip()]
    unknown = sorted(set(args.part_list) - set(PARTS))
    if unknown:
        parser.error(f"--parts {args.parts}: unknown {unknown}; choose among {', '.join(PARTS)}")
    unknown = sorted(set(args.layouts) - set(MODEL_PARALLEL))
    if unknown:
        parser.error(f"--layouts {','.join(args.layouts)}: unknown {unknown}; choose among {', '.join(MODEL_PARALLEL)}")
    for name in ("steps", "rounds", "batch", "ranks", "micro_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    even_rows = args.batch % args.micro_batches == 0
    if "data-parallel" in args.part_list and "sequence_parallel" in args.layouts and not even_rows:
        parser.error(f"--batch {args.batch} must be a multiple of --micro-batches {args.micro_batches} for "
                     "sequence_parallel, whose bound needs each micro-batch's rows to split evenly over the ranks")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the parts asked for, print them with their ratios and return {part: result}."""
    args = parse_args(argv)
    if args.worker in LAYOUT_WORKERS:
        return layout_worker(args)
    if args.worker:
        return data_parallel_worker(args)
    import torch

    torch.set_num_threads(1)
    print(f"numpy {numpy.__version__}, torch {torch.__version__} ({torch.get_num_threads()} thread); mpiprop's "
          f"matrix products through {'MKL' if mkl_gemm.available() else 'numpy'}, elementwise work through "
          f"{'numba loops' if cpu_kernels.available() else 'numpy passes'}", flush=True)
    results: dict[str, Any] = {}
    if "gpt" in args.part_list:
        results["gpt"] = bench_gpt(args)
        report_gpt(results["gpt"], args.rounds)
    if "attention" in args.part_list:
        results["attention"] = bench_attention(args)
        report_attention(results["attention"], args.rounds)
    if "cnn" in args.part_list:
        results["cnn"] = bench_cnn_part(args)
    if "data-parallel" in args.part_list:
        results["data_parallel"] = bench_data_parallel(args)
        report_data_parallel(results["data_parallel"], args.rounds)
    if "compare-training" in args.part_list:
        results["compare_training"] = compare_training(args)
        report_training(results["compare_training"])
        if args.plot:
            plot_training(results["compare_training"], args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
