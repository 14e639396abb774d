"""Property tests: whatever arguments `mpiprop` gets, it runs or exits with a clear error, never a traceback."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from mpiprop.launch import cli, info, plot, scale
from mpiprop.launch.mpiexec import RunOptions
from mpiprop.launch.runner import JobFailed, Launcher
from mpiprop.launch.throughput import format_throughput_line

MAX_COUNT = 2**31 - 1
MAX_FAKE_RUNS = 50
CLI_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINKS = {"allreduce": {"latency_s": 2e-5, "bandwidth_bytes_per_s": 1e9},
         "p2p": {"latency_s": 1e-5, "bandwidth_bytes_per_s": 2e9}}
RUN_VALUES = {"samples_per_s": 1000.0, "step_s": 0.064, "global_batch": 64, "compute_s_per_sample": 1e-4,
              "parameter_bytes": 400000}
# Text a shell can pass as one argument: no NUL, no lone surrogates.
ARGUMENT_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
fake_runs: list[RunOptions] = []  # the jobs asked of the launcher during one `mpiprop` call


class LauncherThatStartsNothing(Launcher):
    """A Launcher that builds the real command line (checking the hostfile) but never starts mpiexec.

    A call asking for more than MAX_FAKE_RUNS jobs (`scale --repeat 99999`) ends as a failed job.
    """

    def run(self, options: RunOptions, timeout: float | None = None) -> int:
        self.command(options)
        return 0

    def run_captured(self, options: RunOptions, timeout: float | None = None) -> str:
        self.command(options)
        fake_runs.append(options)
        if len(fake_runs) > MAX_FAKE_RUNS:
            raise JobFailed(f"more than {MAX_FAKE_RUNS} runs in one test call")
        if options.program == ["-m", "mpiprop.launch.measure"]:
            return f"MPIPROP_LINKS {json.dumps(LINKS)}\n"
        return format_throughput_line(**RUN_VALUES) + "\n"


@contextlib.contextmanager
def in_fresh_folder(tmp_path_factory):
    """Work in a new folder holding train.py, a hostfile `hosts` and a scaling.json."""
    folder = tmp_path_factory.mktemp("cli_properties")
    (folder / "train.py").write_text("print('never run')\n")
    (folder / "hosts").write_text("localhost\n")
    (folder / "scaling.json").write_text(json.dumps(scaling_document()))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder


@pytest.fixture(scope="module", autouse=True)
def nothing_is_launched(tmp_path_factory):
    """Every test here runs in a scratch folder, with mpiexec, `mpiprop info` and plotting replaced."""
    launcher = LauncherThatStartsNothing(mpiexec="mpiexec", flavour="mpich", python="python", cores=4)
    with in_fresh_folder(tmp_path_factory) as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(Launcher, "detect", classmethod(lambda cls, requested="auto": launcher))
        patch.setattr(info, "collect_info", lambda: {"mpi": "none"})
        patch.setattr(scale, "describe_environment", lambda timeout=120: {})
        patch.setattr(plot, "plot_scaling", lambda *args, **kwargs: None)
        yield folder


def scaling_document() -> dict:
    """A minimal scaling.json as `mpiprop scale --predict` writes it (a fresh copy each call)."""
    document = {"mode": "strong", "links": LINKS, "runs": {"1": [RUN_VALUES]},
                "rows": [{"ranks": 1, "samples_per_s": RUN_VALUES["samples_per_s"]}]}
    return json.loads(json.dumps(document))


def run_cli(arguments: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `mpiprop arguments`; any exception but SystemExit propagates."""
    out, err = io.StringIO(), io.StringIO()
    fake_runs.clear()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(arguments)
        except SystemExit as exit_info:
            status = exit_info.code
    return status, out.getvalue(), err.getvalue()


def assert_clear_usage_error(status: int, err: str, *names: str) -> None:
    """Exit status 2 and an `error:` line on stderr that names one of `names`."""
    assert status == 2, f"expected exit status 2, got {status}; stderr: {err}"
    assert "error:" in err and "Traceback" not in err, err
    assert any(name and name in err for name in names), f"stderr names none of {names}: {err}"


def is_count(text: str) -> bool:
    """Whether `text` is what a count option accepts: an integer in [1, 2**31 - 1]."""
    try:
        return 1 <= int(text) <= MAX_COUNT
    except ValueError:
        return False


def is_seconds(text: str) -> bool:
    """Whether `text` is what a timeout option accepts: a positive, finite number."""
    try:
        return 0 < float(text) < math.inf
    except ValueError:
        return False


count_text = st.one_of(
    st.integers(-5, 40).map(str),
    st.integers(MAX_COUNT - 2, MAX_COUNT + 2).map(str),
    st.integers(10**17, 10**40).map(str),
    st.floats(allow_nan=True).map(repr),
    st.sampled_from(["", " ", "two", "1e3", "0x10", " 3 ", "+4", "٣", "²", "1_000", "-", "--", "-h", "--x", "3,4"]),
    ARGUMENT_TEXT,
)
seconds_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "0", "-0", "1e-320", "1e400", "ten", "", "5s", "1_0"]),
    st.integers(-3, 10**30).map(str),
    ARGUMENT_TEXT,
)


def names_of(value: str) -> list[str]:
    """What a failed parse of `value` may be named by: the value itself, its repr, or argparse's wording."""
    return [value, repr(value), "expected one argument"]


@CLI_SETTINGS
@given(option=st.sampled_from(["-n", "--gpus-per-node", "--threads-per-rank"]), value=count_text)
def test_run_counts_are_positive_integers_or_a_usage_error(option, value):
    arguments = ["run", "--dry-run", "train.py"] if option == "-n" else ["run", "-n", "2", "--dry-run", "train.py"]
    status, out, err = run_cli(arguments[:1] + [option, value] + arguments[1:])
    if is_count(value):
        assert status == 0, err
        assert str(int(value)) in out.split()
    else:
        assert_clear_usage_error(status, err, option, *names_of(value))


@CLI_SETTINGS
@given(command=st.sampled_from([["scale", "--ranks", "1", "--repeat"], ["scale", "--ranks", "1", "--threads-per-rank"],
                                ["model", "--layouts", "2", "--from", "scaling.json", "--micro-batches"],
                                ["model", "--layouts", "2", "--from", "scaling.json", "--batch"]]),
       value=count_text)
def test_scale_and_model_counts_are_positive_integers_or_a_usage_error(command, value, tmp_path_factory):
    assume(command[-1] != "--repeat" or not is_count(value) or int(value) <= 3)
    out_folder = ["--out", str(tmp_path_factory.mktemp("scale"))] if command[0] == "scale" else []
    status, out, err = run_cli([*command, value, *out_folder])
    if is_count(value):
        assert status == 0, err
    else:
        assert_clear_usage_error(status, err, command[-1], *names_of(value))


@CLI_SETTINGS
@given(command=st.sampled_from([["scale", "--ranks", "1"], ["model", "--layouts", "2", "--from", "scaling.json"],
                                ["run", "-n", "1", "--dry-run"]]),
       value=seconds_text)
def test_timeouts_are_positive_finite_seconds_or_a_usage_error(command, value, tmp_path_factory):
    option = "--stall-timeout" if command[0] == "run" else "--timeout"
    extra = {"scale": ["--out", str(tmp_path_factory.mktemp("scale"))], "run": ["train.py"]}.get(command[0], [])
    status, out, err = run_cli([*command, option, value, *extra])
    if is_seconds(value):
        assert status == 0, err
    else:
        assert_clear_usage_error(status, err, option, *names_of(value))


@CLI_SETTINGS
@given(text=st.one_of(st.text(alphabet="0123456789xX, ²٣-", max_size=12), ARGUMENT_TEXT,
                      st.lists(st.integers(0, 10**12), min_size=1, max_size=3).map(lambda ns: "x".join(map(str, ns)))))
def test_model_layouts_are_read_or_refused(text):
    status, out, err = run_cli(["model", "--layouts", text, "--from", "scaling.json"])
    if status == 0:
        assert "samples/s" in out
    else:
        assert_clear_usage_error(status, err, "--layouts", *names_of(text), "layout")


@CLI_SETTINGS
@given(text=st.text(alphabet="0123456789, x-²", max_size=10) | st.integers(0, 10**20).map(str) | ARGUMENT_TEXT,
       option=st.sampled_from(["--ranks", "--predict"]))
def test_scale_rank_lists_are_read_or_refused(text, option, tmp_path_factory):
    ranks = [] if option == "--ranks" else ["--ranks", "1"]
    out_folder = str(tmp_path_factory.mktemp("scale"))
    status, out, err = run_cli(["scale", *ranks, option, text, "--out", out_folder])
    if status == 0:
        assert "scaling" in out
    else:
        assert_clear_usage_error(status, err, option, *names_of(text), "rank")


def mutated_documents():
    """scaling.json documents with a key removed or a value replaced by arbitrary JSON."""
    json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=4),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                           max_size=3),
                               max_leaves=6)
    paths = st.sampled_from([("mode",), ("links",), ("links", "allreduce"), ("links", "p2p", "latency_s"),
                             ("links", "allreduce", "bandwidth_bytes_per_s"), ("runs",), ("runs", "1"),
                             ("runs", "1", 0), ("runs", "1", 0, "compute_s_per_sample"),
                             ("runs", "1", 0, "global_batch"), ("runs", "1", 0, "parameter_bytes"),
                             ("rows",), ("rows", 0), ("rows", 0, "samples_per_s"), ("rows", 0, "ranks"), ()])

    @st.composite
    def document(draw):
        content = scaling_document()
        path = draw(paths)
        if not path:
            return draw(json_values)
        parent = content
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
        return content

    return document()


@CLI_SETTINGS
@given(content=st.one_of(mutated_documents().map(json.dumps), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                         st.sampled_from(["", "{", "[]", "null", "{\"links\": {}}"])))
def test_model_from_a_damaged_scaling_json_names_the_file(content, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "scaling.json"
    path.write_text(content, encoding="latin-1")
    status, out, err = run_cli(["model", "--layouts", "2,1x2", "--from", str(path)])
    if status == 0:
        assert "samples/s" in out
    else:
        assert_clear_usage_error(status, err, str(path))


@pytest.mark.parametrize("source", ["no_such.json", "."])
def test_model_from_a_missing_file_or_a_folder_names_it(source):
    status, out, err = run_cli(["model", "--layouts", "2", "--from", source])
    assert_clear_usage_error(status, err, repr(source), source)


@CLI_SETTINGS
@given(content=st.binary(max_size=60), command=st.sampled_from(["run", "scale"]))
def test_hostfiles_of_any_content_run_or_are_refused(content, command, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hosts")
    (folder / "hosts").write_bytes(content)
    arguments = {"run": ["run", "-n", "2", "--hostfile", str(folder / "hosts"), "--dry-run", "train.py"],
                 "scale": ["scale", "--ranks", "1,2", "--hostfile", str(folder / "hosts"), "--out", str(folder)]}
    status, out, err = run_cli(arguments[command])
    if status != 0:
        assert_clear_usage_error(status, err, str(folder / "hosts"))


@CLI_SETTINGS
@given(out=st.sampled_from(["", ".", "train.py", "hosts", "train.py/sub", "new/nested/dir", "a" * 300]) | ARGUMENT_TEXT)
def test_scale_output_folder_is_made_or_refused(out, tmp_path_factory):
    assume(not os.path.isabs(out) and ".." not in out)  # write inside the scratch folder only
    with in_fresh_folder(tmp_path_factory):
        status, stdout, err = run_cli(["scale", "--ranks", "1", "--out", out])
        made = os.path.isfile(os.path.join(out, "scaling.json"))
    if status == 0:
        assert made
    else:
        assert_clear_usage_error(status, err, "--out", repr(out), out)


VOCABULARY = ["run", "info", "scale", "model", "trace", "-n", "--ranks", "--hostfile", "hosts", "--gpus-per-node",
              "--threads-per-rank", "--trace", "--stall-timeout", "--dry-run", "-m", "--", "train.py", "missing.py",
              "--json", "--mode", "strong", "weak", "--out", "--repeat", "--predict", "--timeout", "--layouts",
              "--micro-batches", "--from", "scaling.json", "--batch", "0", "1", "2", "-1", "1,2", "2x2", "nan",
              "-h", "--help", "--bogus", "trace.json", "--launcher", "srun", "mpiexec", "--mpi-arg", "--bind-to", "'"]


@CLI_SETTINGS
@given(arguments=st.lists(st.sampled_from(VOCABULARY) | st.text(string.printable.replace("/", ""), max_size=6)
                          .filter(lambda text: ".." not in text), max_size=9))  # never writes outside its folder
def test_any_argument_list_ends_in_a_result_or_a_clear_exit(arguments, tmp_path_factory):
    with in_fresh_folder(tmp_path_factory):
        status, out, err = run_cli(arguments)
    assert status in (0, 1, 2, 3), f"exit status {status!r}; stderr: {err}"
    assert "Traceback" not in out + err
    if status == 2:
        assert "error:" in err, err


def test_a_run_without_a_script_says_so():
    status, out, err = run_cli(["run", "-n", "2"])
    assert_clear_usage_error(status, err, "no script to run")
    status, out, err = run_cli(["run", "-n", "2", "missing.py"])
    assert_clear_usage_error(status, err, "'missing.py'")
