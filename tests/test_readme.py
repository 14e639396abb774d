"""README.md's python snippets run as shown, and its command lines name files and options that exist."""
import re
import shlex
import sys

import pytest

from mpi_launch import REPOSITORY_ROOT, mpi_env, run_bounded, run_mpi

README = REPOSITORY_ROOT / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
MPI_SNIPPET = "mpiprop.distributed"  # a snippet that uses it runs on 2 ranks
SNIPPET_TIMEOUT_S = 180
PARSED = "arguments parsed"

# Runs a script or module with sys.argv set, stopping as soon as its argparse parser accepted the arguments.
PARSE_ONLY = f"""
import argparse, runpy, sys
parse_known_args = argparse.ArgumentParser.parse_known_args
depth = 0
def parse_and_stop(parser, args=None, namespace=None):
    global depth
    depth += 1
    parsed = parse_known_args(parser, args, namespace)
    depth -= 1
    if depth:  # a subcommand's parser, called by the top-level one
        return parsed
    if parsed[1]:
        parser.error("unrecognized arguments: " + " ".join(parsed[1]))
    print({PARSED!r}, parsed[0], flush=True)
    raise SystemExit(0)
argparse.ArgumentParser.parse_known_args = parse_and_stop
kind, target, *arguments = sys.argv[1:]
sys.argv[1:] = arguments
if kind == "path":
    sys.argv[0] = target
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
raise SystemExit("the program ended without parsing its arguments with argparse")
"""


def readme_text() -> str:
    return README.read_text()


def python_snippets() -> list:
    snippets = []
    for number, match in enumerate(PYTHON_BLOCK.finditer(readme_text()), start=1):
        code = match.group(1)
        stated = re.search(r"mpiexec -n (\d+)", code)
        ranks = int(stated.group(1)) if stated else 2 if MPI_SNIPPET in code else 1
        snippets.append(pytest.param(code, ranks, id=f"snippet{number}-{ranks}rank"))
    return snippets


def test_readme_has_the_snippets_it_should():
    counts = [snippet.values[1] for snippet in python_snippets()]
    assert len(counts) >= 4 and counts.count(2) >= 2


@pytest.mark.parametrize("code, ranks", python_snippets())
def test_python_snippet_runs_as_shown(code, ranks, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(code)
    if ranks > 1:
        run_mpi(script, ranks, timeout=SNIPPET_TIMEOUT_S)
        return
    result = run_bounded([sys.executable, str(script)], SNIPPET_TIMEOUT_S, env=mpi_env(), cwd=tmp_path)
    assert result.returncode == 0, f"README snippet failed:\n{code}\n--- stderr ---\n{result.stderr}"


def shell_commands(text: str) -> list[list[str]]:
    """The commands of README's indented shell lines (outside code fences), continuations joined, split at `&&`."""
    lines = FENCE.sub("", text).replace("\\\n", " ").splitlines()
    commands = []
    for line in lines:
        if not line.startswith("    ") or line.startswith("     "):
            continue
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words[:1] == ["mpiexec"]:
                words = words[3:]  # mpiexec -n N
            if words[:1] == ["mpiprop"] or (words[:1] == ["python"] and words[1].startswith("examples/")):
                commands.append(words)
    return commands


def test_shell_commands_are_found():
    commands = shell_commands(readme_text())
    assert ["python", "examples/autoencoder.py"] in commands
    assert ["mpiprop", "info"] in commands
    assert ["python", "examples/train_digits.py"] in commands  # after `... && OMP_NUM_THREADS=1 mpiexec -n 2`
    assert any(words[:2] == ["mpiprop", "scale"] and "--" in words for words in commands)


def program_checks(words: list[str]) -> list[tuple[str, str, list[str]]]:
    """What to parse for a README command: (kind, target, arguments), the launched program included."""
    from mpiprop.launch.cli import split_command

    if words[0] == "python":
        return [("path", words[1], words[2:])]
    arguments, program = split_command(words[1:])
    checks = [("module", "mpiprop.launch", arguments)]
    if program[:1] == ["-m"]:
        checks.append(("module", program[1], program[2:]))
    elif program:
        checks.append(("path", program[0], program[1:]))
    return checks


@pytest.mark.parametrize("words", shell_commands(readme_text()), ids=" ".join)
def test_shell_command_names_existing_files_and_options(words, tmp_path):
    (tmp_path / "hosts").write_text("localhost:2\n")  # `--hostfile hosts` reads it
    for kind, target, arguments in program_checks(words):
        if kind == "path":
            assert (REPOSITORY_ROOT / target).is_file(), f"README runs {target}, which does not exist"
            target = str(REPOSITORY_ROOT / target)
        command = [sys.executable, "-c", PARSE_ONLY, kind, target, *arguments]
        result = run_bounded(command, 120, env=mpi_env(), cwd=tmp_path)
        assert result.returncode == 0 and PARSED in result.stdout, (
            f"README's `{shlex.join(words)}`: {target} does not accept {arguments}:\n{result.stderr}")
