"""Pipeline speed: one process vs a 2-stage pipeline (every schedule) vs torch.distributed.pipelining 1F1B.

    python examples/benchmarks/bench_pipeline.py                      # 3 interleaved rounds
    python examples/benchmarks/bench_pipeline.py --rounds 5 --steps 30 --json pipe.json

Model: MLP 784 -> six hidden layers of 1024 (ReLU) -> 10, softmax cross-entropy, SGD with
momentum, float32; batch 256 in 8 micro-batches; one BLAS thread per rank. The driver
starts every measurement itself with `mpiexec`, in interleaved rounds:
  - "single": the whole model in one process (forward, backward, update of the whole batch);
  - "pipeline": N ranks (default 2), each schedule in turn (gpipe, 1f1b, interleaved, zb-h1),
    split by parameter count; it also records each rank's bubble fraction (idle share of a
    step, from the executor's per-step timings) and peak number of stashed micro-batches;
  - "torch": PyTorch's torch.distributed.pipelining with Schedule1F1B over gloo, on the same
    layers, the same split, the same initial weights and batch (skipped without torch).
All contestants start from the same weights; their first-step losses are compared before
the timings are trusted. Reported: medians over rounds of samples/s, the ratios of the 1F1B
pipeline to one process and to torch, measured bubbles next to the theory, and each
schedule's speedup next to its bound: one process's step time x (1 - the registry's bubble
formula) / the busiest stage's measured computing time per step.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` (and the packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.workers import print_result, run_worker  # noqa: E402
from mpiprop.distributed.pipeline.schedule_registry import schedule_names, schedule_spec  # noqa: E402

HIDDEN_LAYERS, WIDTH, INPUTS, CLASSES = 6, 1024, 784, 10
LOSS_TOLERANCE = 1e-4
TARGETS = {"over_single": 1.5, "over_torch": 1.5}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=2, help="pipeline ranks (default 2)")
    parser.add_argument("--batch", type=int, default=256, help="samples per step (default 256)")
    parser.add_argument("--micro-batches", type=int, default=8, help="micro-batches per step (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    parser.add_argument("--schedules", default=",".join(schedule_names()), help="comma-separated pipeline schedules")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch.distributed.pipelining run")
    parser.add_argument("--json", help="also write all measurements to this JSON file")
    parser.add_argument("--worker", choices=["single", "pipeline", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--init-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the shared model and data --------------------------------------------------------------------
def build_model(width: int = WIDTH):
    """Linear 784->width, ReLU, 5 x (Linear width->width, ReLU), Linear width->10: 13 layers (width 1024)."""
    import mpiprop.network as nn

    nn.manual_seed(0)
    widths = [INPUTS] + [width] * HIDDEN_LAYERS + [CLASSES]
    layers: list = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def synthetic_batch(batch: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((batch, INPUTS), dtype=numpy.float32), rng.integers(0, CLASSES, batch)


def time_steps(step, args: argparse.Namespace, barrier, after_step=None) -> tuple[float, float]:
    """(first-step loss, seconds per timed step): warm-up steps, a barrier, then the timed steps."""
    first_loss = step()
    for _ in range(args.warmup - 1):
        step()
    barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
        if after_step is not None:
            after_step()
    barrier()
    return first_loss, (time.perf_counter() - started) / args.steps


# --- workers: run under mpiexec; rank 0 prints one RESULT line -------------------------------------
def single_worker(args: argparse.Namespace) -> None:
    import mpiprop.network as nn

    model, loss_fn = build_model(), nn.CrossEntropyLoss()
    optimizer = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = synthetic_batch(args.batch)

    def step() -> float:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
        return loss

    first_loss, seconds = time_steps(step, args, lambda: None)
    print_result({"first_loss": first_loss, "samples_per_s": args.batch / seconds})


def pipeline_worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    import mpiprop.network as nn
    from mpiprop.distributed.pipeline.pipeline import Pipeline

    world = MPI.COMM_WORLD
    x, y = synthetic_batch(args.batch)
    results = {}
    for schedule in args.schedules.split(","):
        pipe = Pipeline(build_model(), args.micro_batches, schedule)
        optimizer = nn.optim.SGD(pipe.parameters(), lr=0.01, momentum=0.9)
        stats: list = []

        def step() -> float:
            optimizer.zero_grad()
            loss = pipe.train_step(x if pipe.is_first else None, y if pipe.is_last else None, nn.CrossEntropyLoss())
            optimizer.step()
            return loss

        first_loss, seconds = time_steps(step, args, world.Barrier, lambda: stats.append(pipe.last_stats))
        per_rank = world.allgather({"bubble": statistics.median(s.bubble for s in stats),
                                    "peak_stash": pipe.last_stats.peak_stash,
                                    "busy_ms": 1e3 * statistics.median(s.busy for s in stats), "balance": pipe.balance})
        results[schedule] = {"first_loss": first_loss, "samples_per_s": args.batch / seconds, "ranks": per_rank}
    if world.rank == 0:
        print_result(results)


def torch_worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as torch_dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from mpiprop.distributed.pipeline.partition import balance_costs, layer_ranges, parameter_counts

    torch.set_num_threads(1)
    rank, world_size = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
    torch_dist.init_process_group("gloo", init_method=f"file://{args.init_file}", rank=rank, world_size=world_size)
    model = build_model()
    start, stop = layer_ranges(balance_costs(parameter_counts(model), world_size))[rank]
    module = torch.nn.Sequential(*[_torch_layer(layer) for layer in model.layers[start:stop]])
    stage = PipelineStage(module, rank, world_size, torch.device("cpu"))  # shapes inferred on the first step
    schedule = Schedule1F1B(stage, args.micro_batches, loss_fn=torch.nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    x_np, y_np = synthetic_batch(args.batch)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def step() -> float:
        optimizer.zero_grad()
        losses: list = []
        if rank == 0:
            schedule.step(x)
        elif rank == world_size - 1:
            schedule.step(target=y, losses=losses)
        else:
            schedule.step()
        optimizer.step()
        return float(torch.stack(losses).mean()) if losses else float("nan")

    first_loss, seconds = time_steps(step, args, torch_dist.barrier)
    losses = [None] * world_size
    torch_dist.all_gather_object(losses, first_loss)
    if rank == 0:
        print_result({"first_loss": losses[-1], "samples_per_s": args.batch / seconds})
    torch_dist.destroy_process_group()


def _torch_layer(layer):
    import torch

    if hasattr(layer, "weight"):
        linear = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(layer.weight.data.T.copy()))
            linear.bias.copy_(torch.from_numpy(layer.bias.data))
        return linear
    return torch.nn.ReLU()


# --- driver ----------------------------------------------------------------------------------------------
def launch(args: argparse.Namespace, worker: str, ranks: int, timeout: float = 900) -> Any:
    """Run this file as `worker` under `mpiexec -n ranks` and return its RESULT record."""
    arguments = ["--worker", worker, "--batch", str(args.batch), "--micro-batches", str(args.micro_batches),
                 "--steps", str(args.steps), "--warmup", str(args.warmup), "--schedules", args.schedules]
    return run_worker(__file__, ranks, arguments, timeout=timeout, torch_init_file=worker == "torch")


def run_rounds(args: argparse.Namespace, with_torch: bool) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {"single": [], "pipeline": [], "torch": []}
    contestants = [("single", 1), ("pipeline", args.stages)] + ([("torch", args.stages)] if with_torch else [])
    for round_number in range(args.rounds):
        shift = round_number % len(contestants)
        for worker, ranks in contestants[shift:] + contestants[:shift]:
            runs[worker].append(launch(args, worker, ranks))
        line = f"round {round_number + 1}/{args.rounds}: single {runs['single'][-1]['samples_per_s']:.0f}"
        line += "".join(f", {name} {record['samples_per_s']:.0f}" for name, record in runs["pipeline"][-1].items())
        if with_torch:
            line += f", torch 1f1b {runs['torch'][-1]['samples_per_s']:.0f}"
        print(line + " samples/s", flush=True)
    return runs


def check_same_losses(runs: dict[str, list[Any]]) -> None:
    """All contestants computed the same first step (they start from the same weights and batch).

    Raises:
        RuntimeError: naming the contestant whose first loss differs.
    """
    expected = runs["single"][0]["first_loss"]
    found = {f"pipeline {name}": record["first_loss"] for name, record in runs["pipeline"][0].items()}
    if runs["torch"]:
        found["torch 1f1b"] = runs["torch"][0]["first_loss"]
    for name, loss in found.items():
        if not abs(loss - expected) <= LOSS_TOLERANCE:
            raise RuntimeError(f"{name} computed a first loss of {loss}, one process {expected}; timings are void")


def summarise(args: argparse.Namespace, runs: dict[str, list[Any]]) -> dict[str, Any]:
    single = [record["samples_per_s"] for record in runs["single"]]
    summary: dict[str, Any] = {"stages": args.stages, "batch": args.batch, "micro_batches": args.micro_batches,
                               "rounds": args.rounds, "single_samples_per_s": statistics.median(single),
                               "schedules": {}}
    for name in runs["pipeline"][0]:
        records = [round_records[name] for round_records in runs["pipeline"]]
        bubble = schedule_spec(name).bubble(args.stages, args.micro_batches)
        busy_ms = [statistics.median(r["ranks"][k]["busy_ms"] for r in records) for k in range(args.stages)]
        over_single = statistics.median(r["samples_per_s"] / s for r, s in zip(records, single))
        bound = speedup_bound(1e3 * args.batch / summary["single_samples_per_s"], busy_ms, bubble)
        summary["schedules"][name] = {
            "samples_per_s": statistics.median(r["samples_per_s"] for r in records),
            "over_single": over_single,
            "speedup_bound": bound,
            "share_of_bound": over_single / bound,
            "bubble_measured": [statistics.median(r["ranks"][k]["bubble"] for r in records)
                                for k in range(args.stages)],
            "bubble_theory": bubble,
            "peak_stash": [rank["peak_stash"] for rank in records[0]["ranks"]],
            "busy_ms": busy_ms,
            "balance": records[0]["ranks"][0]["balance"],
        }
    if runs["torch"]:
        summary["torch_1f1b_samples_per_s"] = statistics.median(r["samples_per_s"] for r in runs["torch"])
        if "1f1b" in summary["schedules"]:
            summary["1f1b_over_torch"] = statistics.median(
                p["1f1b"]["samples_per_s"] / t["samples_per_s"] for p, t in zip(runs["pipeline"], runs["torch"]))
    return summary


def speedup_bound(single_step_ms: float, stage_busy_ms: Sequence[float], bubble: float) -> float:
    """The most a pipeline can gain over one process, given what each stage computes per step.

    The slowest stage computes `max(stage_busy_ms)` per step and, with the schedule's textbook
    bubble, is busy only `1 - bubble` of the step, so a step lasts at least
    `max(stage_busy_ms) / (1 - bubble)`.

    Args:
        single_step_ms: one process's time for the whole batch.
        stage_busy_ms: each stage's computing time per step, measured in the pipeline.
        bubble: the schedule's idle share from the registry's bubble formula.

    Returns:
        single_step_ms divided by that shortest pipeline step.
    """
    return single_step_ms * (1.0 - bubble) / max(stage_busy_ms)


def report(summary: dict[str, Any]) -> None:
    p, m = summary["stages"], summary["micro_batches"]
    print(f"MLP {INPUTS}-{HIDDEN_LAYERS}x{WIDTH}-{CLASSES}, batch {summary['batch']} in {m} micro-batches, "
          f"{p} stages, one BLAS thread per rank, median of {summary['rounds']} interleaved rounds")
    print(f"  one process:                {summary['single_samples_per_s']:8.0f} samples/s")
    for name, s in summary["schedules"].items():
        measured = ", ".join(f"{b:.3f}" for b in s["bubble_measured"])
        print(f"  pipeline {name:12s}:     {s['samples_per_s']:8.0f} samples/s  {s['over_single']:.2f}x one process"
              f"  bound {s['speedup_bound']:.2f}x (reached {s['share_of_bound']:.2f})"
              f"  bubble per rank [{measured}] (theory {s['bubble_theory']:.3f})  peak stash {s['peak_stash']}")
    if "torch_1f1b_samples_per_s" in summary:
        print(f"  torch.distributed.pipelining Schedule1F1B: {summary['torch_1f1b_samples_per_s']:8.0f} samples/s")
    if "1f1b" in summary["schedules"]:
        print(f"  1f1b / one process: {summary['schedules']['1f1b']['over_single']:.2f}x "
              f"(target >= {TARGETS['over_single']})")
    if "1f1b_over_torch" in summary:
        print(f"  1f1b / torch 1F1B:  {summary['1f1b_over_torch']:.2f}x (target >= {TARGETS['over_torch']})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with --worker, one measurement under mpiexec); returns the summary."""
    args = parse_args(argv)
    workers = {"single": single_worker, "pipeline": pipeline_worker, "torch": torch_worker}
    if args.worker:
        return workers[args.worker](args)
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not with_torch and not args.no_torch:
        print("torch is not installed: the torch.distributed.pipelining comparison is skipped")
    runs = run_rounds(args, with_torch)
    check_same_losses(runs)
    summary = summarise(args, runs)
    report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
