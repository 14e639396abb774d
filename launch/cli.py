"""The `mpiprop` command line: run, info, scale, model and trace."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Sequence

from mpiprop.launch.interpreter import without_interpreter
from mpiprop.launch.job_processes import DEFAULT_GRACE_S
from mpiprop.launch.mpiexec import AUTO, LAUNCHER_CHOICES, RunOptions
from mpiprop.launch.runner import JobFailed
from mpiprop.launch.version_option import VersionAction

DESCRIPTION = "Launch and measure mpiprop training jobs under MPI. Plain `mpiexec -n N python script.py` works too."
MAX_COUNT = 2**31 - 1  # MPI counts are C ints
MODEL_OPTIMIZERS = ("sgd", "momentum", "adam")  # memory_model.OPTIMIZER_STATE_COPIES, named without importing it
MODEL_DTYPES = ("float32", "float64")  # memory_model.DTYPE_BYTES


def positive_int(text: str) -> int:
    """argparse type: a positive integer up to MAX_COUNT, with an error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT}, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def rank_list(text: str) -> list[int]:
    """argparse type: a comma-separated list of rank counts."""
    from mpiprop.launch.scale import parse_rank_list

    try:
        ranks = parse_rank_list(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if max(ranks) > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"rank count {max(ranks)} in {text!r} is above {MAX_COUNT}")
    return ranks


def layout_list(text: str) -> str:
    """argparse type: layouts such as "8,4x2,4x1:zero1,1x1x4", checked here and returned as given."""
    from mpiprop.launch.memory_model import parse_parallel_layouts

    try:
        layouts = parse_parallel_layouts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    too_big = [layout for layout in layouts if layout.ranks > MAX_COUNT]
    if too_big:
        raise argparse.ArgumentTypeError(f"layout {too_big[0].name} in {text!r} needs more than {MAX_COUNT} ranks")
    return text


def memory_amount(text: str) -> int:
    """argparse type: bytes such as "2GiB", "512MiB" or "1000000"."""
    from mpiprop.launch.memory_model import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def width_list(text: str) -> tuple[int, ...]:
    """argparse type: an MLP's layer widths such as "784,4096,4096,10"."""
    from mpiprop.launch.memory_model import parse_widths

    try:
        return parse_widths(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def hostfile(path: str) -> str:
    """argparse type: an existing, readable text file listing hosts."""
    try:
        with open(path) as handle:
            handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not a text file"
        raise argparse.ArgumentTypeError(f"hostfile {path!r} cannot be read ({reason}); give a file listing one "
                                         "host per line (MPICH: `host:slots`, Open MPI: `host slots=N`)") from None
    return path


def scaling_json(path: str) -> str:
    """argparse type: a scaling.json written by `mpiprop scale --predict`, checked by loading it."""
    from mpiprop.launch.model_command import load_scaling_json

    remake = "make it with `mpiprop scale ... --predict R`"
    try:
        measurements, workload, measured, contention = load_scaling_json(path)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{path!r} cannot be read ({error.strerror})") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        raise argparse.ArgumentTypeError(f"{path!r} is not a scaling.json as `mpiprop scale` writes it "
                                         f"({type(error).__name__}: {error}); {remake}") from None
    values = {"compute_s_per_sample": measurements.compute_s_per_sample, "global_batch": workload.global_batch,
              "parameter_bytes": workload.parameter_bytes,
              "activation_bytes_per_sample": workload.activation_bytes_per_sample,
              **{f"{name}.{field}": value for name, link in (("allreduce", measurements.allreduce),
                                                            ("p2p", measurements.p2p))
                 for field, value in vars(link).items()},
              **{f"samples_per_s at {ranks} ranks": value for ranks, value in measured.items()}}
    if contention is not None:
        values.update({"overhead_s": contention.overhead_s, "exposed_allreduce": contention.exposed_allreduce,
                       **{f"alone samples_per_s at {ranks} ranks": value
                          for ranks, value in contention.alone_samples_per_s.items()}})
    unusable = [f"{name}={value!r}" for name, value in values.items() if not _is_finite_non_negative(value)]
    if workload.global_batch < 1:
        unusable.append(f"global_batch={workload.global_batch!r}")
    if contention is not None:
        unusable += [f"exposed_allreduce={contention.exposed_allreduce!r}"] if contention.exposed_allreduce > 1 else []
        unusable += [f"alone run at {ranks} ranks: {value!r} samples/s"
                     for ranks, value in contention.alone_samples_per_s.items() if ranks < 1 or value <= 0]
    if unusable:
        raise argparse.ArgumentTypeError(f"{path!r} holds unusable values ({', '.join(unusable)}); {remake}")
    return path


def _is_finite_non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def build_parser() -> argparse.ArgumentParser:
    """The `mpiprop` parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="mpiprop", description=DESCRIPTION)
    parser.add_argument("--version", action=VersionAction, help="print mpiprop's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="{run,info,scale,model,trace}")
    commands.required = True
    _add_run(commands)
    info = commands.add_parser("info", help="MPI library, mpi4py, CUDA-awareness, cupy/NCCL, GPUs and cores")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_scale(commands)
    _add_model(commands)
    trace = commands.add_parser("trace", help="merge per-rank timeline files (trace.rank*.json) into one trace")
    trace.add_argument("path", help="the MPIPROP_TRACE path, e.g. trace.json")
    return parser


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="run a script on N ranks through the installed mpiexec",
                              description="Run `script.py args` on N MPI ranks: an exception on any rank ends "
                                          "the job with its traceback; BLAS threads and GPUs are set per rank.")
    run.add_argument("-n", "-np", "--ranks", type=positive_int, required=True, help="number of MPI ranks")
    run.add_argument("--hostfile", type=hostfile,
                     help="hosts to run on (MPICH: `host:slots` lines; Open MPI: `host slots=N`)")
    run.add_argument("--gpus-per-node", type=positive_int, help="bind each rank to GPU (local rank %% G)")
    run.add_argument("--threads-per-rank", type=positive_int,
                     help="BLAS/OpenMP threads per rank (default: cores divided by ranks per node)")
    run.add_argument("--trace", metavar="FILE", help="write a Chrome trace timeline (sets MPIPROP_TRACE)")
    run.add_argument("--stall-timeout", type=positive_seconds, metavar="SECONDS",
                     help="abort the job, saying which rank waits where, when one communication waits this long")
    run.add_argument("--grace", type=positive_seconds, default=DEFAULT_GRACE_S, metavar="SECONDS",
                     help="after SIGTERM, SIGINT, SIGHUP, SIGUSR1 or SIGUSR2 (passed on to every rank), wait this "
                          f"long for the job to end by itself before killing it (default {DEFAULT_GRACE_S:g}); "
                          "mpiprop then exits with the job's status (75 after a preemption checkpoint)")
    run.add_argument("--launcher", choices=LAUNCHER_CHOICES, default=AUTO,
                     help="auto (the default): srun inside a Slurm allocation, else mpiexec (MPICH or Open MPI)")
    run.add_argument("--mpi-arg", action="append", default=[], metavar="ARG", dest="mpi_args",
                     help="pass ARG to the launcher (repeatable; split like a shell line), e.g. "
                          "--mpi-arg='--bind-to core' or --mpi-arg --allow-run-as-root")
    run.add_argument("--dry-run", action="store_true", help="print the launcher's command line instead of running it")
    run.add_argument("program", nargs="*", help="script.py and its arguments, or -m module and its arguments "
                                                "(a leading `python` is dropped: the ranks run mpiprop's Python)")
    run.set_defaults(subparser=run)


RUN_OPTIONS_WITH_VALUES = ("-n", "-np", "--ranks", "--hostfile", "--gpus-per-node", "--threads-per-rank", "--trace",
                           "--stall-timeout", "--grace", "--launcher", "--mpi-arg")
LAUNCHER_ARGUMENT_OPTION = "--mpi-arg"  # its value often starts with "-", which argparse would take for an option


def split_command(arguments: list[str]) -> tuple[list[str], list[str]]:
    """`mpiprop`'s arguments split into its own and the program's: `run`'s program starts at the
    script (see `split_run_arguments`), `scale`'s after `--`; other commands have none."""
    if arguments[:1] == ["run"]:
        own, program = split_run_arguments(arguments[1:])
        return ["run", *own], program
    if arguments[:1] == ["scale"] and "--" in arguments:
        return arguments[:arguments.index("--")], arguments[arguments.index("--") + 1:]
    return arguments, []


def split_run_arguments(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split `run`'s arguments into its own options and the program (from the script or `-m`, or after `--`).

    The program's own options (`train.py --lr 0.1`) must not be read as mpiprop's, so the split
    happens before argparse sees them. `--mpi-arg VALUE` becomes `--mpi-arg=VALUE`, so that a value
    such as `--bind-to` reaches argparse as a value.
    """
    own: list[str] = []
    index = 0
    while index < len(arguments):
        token = arguments[index]
        if token == "--":
            return own, list(arguments[index + 1:])
        if token == "-m" or not token.startswith("-"):
            return own, list(arguments[index:])
        if token == LAUNCHER_ARGUMENT_OPTION and index + 1 < len(arguments):
            own.append(f"{token}={arguments[index + 1]}")
            index += 2
            continue
        takes_value = token in RUN_OPTIONS_WITH_VALUES
        own += arguments[index:index + (2 if takes_value else 1)]
        index += 2 if takes_value else 1
    return own, []


def _add_scale(commands) -> None:
    scale = commands.add_parser("scale", help="strong or weak scaling sweep: CSV, JSON and a PNG plot",
                                usage="mpiprop scale --ranks R1,R2,... [--mode {strong,weak}] [options] "
                                      "[-- script.py args]",
                                description="Run a workload at each rank count and write DIR/scaling.csv, "
                                            "DIR/scaling.json and DIR/scaling.png. The workload is the built-in "
                                            "MLP benchmark unless a program follows `--` (`-- script.py args` or "
                                            "`-- -m module args`); it reports its "
                                            "throughput by printing `MPIPROP_THROUGHPUT samples_per_s=<number>`.")
    scale.add_argument("--ranks", type=rank_list, required=True, help="rank counts, e.g. 1,2,4")
    scale.add_argument("--mode", choices=("strong", "weak"), default="strong",
                       help="strong: fixed global batch split over ranks; weak: fixed batch per rank")
    scale.add_argument("--out", default="scaling", help="output directory (default: ./scaling)")
    scale.add_argument("--repeat", "--repeats", type=positive_int, default=1,
                       help="runs per rank count; the median is kept (default 1, which cannot tell the efficiency "
                            "from noise: a warning says so, and scaling.csv's `runs` column shows it)")
    scale.add_argument("--threads-per-rank", type=positive_int, default=1, help="BLAS threads per rank (default 1)")
    scale.add_argument("--hostfile", type=hostfile, help="hosts for runs across nodes")
    scale.add_argument("--predict", type=rank_list, default=[],
                       help="also predict these rank counts with the performance model (measures links on 2 ranks)")
    scale.add_argument("--timeout", type=positive_seconds, default=600, help="seconds allowed per run")


def _add_model(commands) -> None:
    model = commands.add_parser("model", help="predict step time of layouts, and whether a model fits their memory",
                                description="Predict layouts from measured compute time per sample and measured "
                                            "allreduce and point-to-point costs (read from a scaling.json made by "
                                            "`scale --predict`, or measured now on 1 and 2 ranks). With "
                                            "--memory-per-rank, also the bytes each layout's busiest rank holds "
                                            "for an MLP (parameters, gradients, optimizer state, peak "
                                            "activations) and whether they fit.")
    model.add_argument("--layouts", type=layout_list, required=True,
                       help="comma-separated D, DxS or DxSxT (data x pipeline stages x tensor-parallel ranks), "
                            "optionally with :zero1 or :zero2 (DataParallel's sharded optimizer state), e.g. "
                            "8,4x2,4x1:zero1,1x1x4; tensor parallel and :zero layouts need --memory-per-rank")
    model.add_argument("--micro-batches", type=positive_int, help="micro-batches per step (default 4 per stage)")
    model.add_argument("--from", dest="source", type=scaling_json, metavar="JSON",
                       help="scaling.json from `mpiprop scale --predict`")
    model.add_argument("--batch", type=positive_int,
                       help="global batch (default: the measured workload's, else the built-in workload's)")
    model.add_argument("--timeout", type=positive_seconds, default=600, help="seconds allowed per measuring run")
    fit = model.add_argument_group("whether a model fits", "an MLP of Linear layers with ReLU between them, "
                                   "trained with cross-entropy; with tensor parallelism each pair of Linear layers "
                                   "is split column -> row (the step-time table stays the measured workload's)")
    fit.add_argument("--memory-per-rank", type=memory_amount, metavar="BYTES",
                     help="memory of one rank, e.g. 2GiB, 512MiB or 1000000 (units B, KiB, MiB, GiB)")
    fit.add_argument("--widths", type=width_list,
                     help="layer widths, input first, e.g. 784,4096,4096,10 (default: the built-in workload's)")
    fit.add_argument("--optimizer", choices=MODEL_OPTIMIZERS, default="adam",
                     help="sgd, momentum or adam: 0, 1 or 2 state values per parameter (default adam)")
    fit.add_argument("--dtype", choices=MODEL_DTYPES, default="float32", help="default float32")
    fit.add_argument("--recompute", action="store_true",
                     help="recompute each pair of Linear layers in backward, keeping only its input")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mpiprop` and `python -m mpiprop.launch`; returns the exit status."""
    parser = build_parser()
    arguments, program = split_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(arguments)
    args.program = program
    handlers = {"run": _run, "info": _info, "scale": _scale, "model": _model, "trace": _trace}
    try:
        return handlers[args.command](args, parser)
    except (ValueError, OSError) as error:
        parser.exit(2, f"mpiprop {args.command}: error: {error}\n")
    except JobFailed as error:
        parser.exit(1, f"mpiprop {args.command}: error: {error}\n")
    except subprocess.TimeoutExpired as error:
        parser.exit(3, f"mpiprop {args.command}: error: a job ran past its {error.timeout:g} s timeout\n")


def run_options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunOptions:
    """RunOptions from parsed `run` arguments.

    Raises:
        SystemExit: (through the run parser's `error`) when no script is given or the script does not exist.
    """
    try:
        program, warning = without_interpreter(list(args.program))
    except ValueError as error:
        args.subparser.error(str(error))
    if warning:
        print(f"mpiprop run: warning: {warning}", file=sys.stderr)
    if not program or program == ["-m"]:
        args.subparser.error("no script to run; usage: mpiprop run -n N [options] script.py [args]")
    if program[0] != "-m" and not os.path.isfile(program[0]) and not args.dry_run:
        args.subparser.error(f"script {program[0]!r} does not exist")
    launcher_arguments = tuple(word for argument in args.mpi_args for word in _shell_words(argument, args))
    return RunOptions(ranks=args.ranks, program=program, hostfile=args.hostfile, gpus_per_node=args.gpus_per_node,
                      threads_per_rank=args.threads_per_rank, trace=args.trace,
                      stall_timeout=args.stall_timeout, launcher_arguments=launcher_arguments)


def _shell_words(argument: str, args: argparse.Namespace) -> list[str]:
    try:
        return shlex.split(argument)
    except ValueError as error:
        args.subparser.error(f"--mpi-arg {argument!r} cannot be split like a shell line ({error}); quote it whole")


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mpiprop.launch.runner import Launcher

    options = run_options_from(args, parser)
    launcher = Launcher.detect(args.launcher)
    for warning in launcher.warnings(options):
        print(f"mpiprop run: warning: {warning}", file=sys.stderr)
    command = launcher.command(options)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    try:
        return launcher.run(options, grace=args.grace)
    except KeyboardInterrupt:
        return 130


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mpiprop.launch.info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _scale(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mpiprop.launch.runner import Launcher
    from mpiprop.launch.scale import ScaleConfig, format_table, run_scaling

    config = ScaleConfig(ranks=tuple(args.ranks), mode=args.mode, out=args.out, program=tuple(args.program),
                         repeat=args.repeat, threads_per_rank=args.threads_per_rank, hostfile=args.hostfile,
                         predict=tuple(args.predict), timeout=args.timeout)
    result = run_scaling(config, Launcher.detect(), log=lambda line: print(line, file=sys.stderr))
    print(f"{config.mode} scaling of {' '.join(config.workload)}")
    print(format_table(result["rows"]))
    if result["noise_warning"]:
        print(f"mpiprop scale: warning: {result['noise_warning']}", file=sys.stderr)
    written = [os.path.join(config.out, name) for name in ("scaling.csv", "scaling.json", "scaling.png")]
    print(f"wrote {', '.join(written)}")
    return 0


def _model(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mpiprop.launch.memory_model import ModelDescription
    from mpiprop.launch.model_command import FitQuestion, builtin_widths, run_model

    fit = None
    if args.memory_per_rank is not None:
        description = ModelDescription(args.widths or builtin_widths(), args.optimizer, args.dtype, args.recompute)
        fit = FitQuestion(description, args.memory_per_rank)
    print(run_model(args.layouts, args.micro_batches, args.source, args.batch, args.timeout, fit))
    return 0


def _trace(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from mpiprop.distributed.reliability import merge_rank_files, rank_file

    if merge_rank_files(args.path) is None:
        raise FileNotFoundError(f"no per-rank trace files such as {rank_file(args.path, 0)!r} to merge; record "
                                f"them by running with MPIPROP_TRACE={args.path} (or `mpiprop run --trace`)")
    print(f"wrote {args.path}")
    return 0
