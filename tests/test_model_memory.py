"""The memory model of `mpiprop model`: parsing, per-rank bytes against hand-computed ones, and the printed table."""
import json
import re
import subprocess
import sys

import pytest

from mpiprop.launch import cli
from mpiprop.launch.memory_model import (DTYPE_BYTES, OPTIMIZER_STATE_COPIES, ModelDescription, ParallelLayout,
                                         format_bytes, parameters_in_final_order, parse_bytes, parse_parallel_layouts,
                                         parse_widths, rank_memory, reduce_scattering_bytes, shortfall)
from mpiprop.launch.model_command import FitQuestion, builtin_widths, format_memory_fit, run_model
from mpiprop.launch.modeling import parse_layouts
from mpiprop.launch.perfmodel import Layout
from mpiprop.network.training.memory_report import MemoryReport

# Linear(4, 8): 32 + 8 values; Linear(8, 6): 48 + 6; Linear(6, 2): 12 + 2; 108 float32 values = 432 bytes
SMALL = ModelDescription((4, 8, 6, 2), optimizer="adam", dtype="float32")


@pytest.mark.parametrize("text, expected", [("2GiB", 2 << 30), ("512 MiB", 512 << 20), ("64KiB", 65536),
                                            ("100B", 100), ("1000000", 1000000), ("1.5kib", 1536)])
def test_memory_amounts_read_with_binary_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["2GB", "-1GiB", "0", "0.4B", "", "GiB", "2 GiB extra"])
def test_unreadable_memory_amounts_are_named_with_the_units_to_use(text):
    with pytest.raises(ValueError, match=rf"cannot read memory {text!r}.*B, KiB, MiB or GiB"):
        parse_bytes(text)


def test_widths_read_and_refuse():
    assert parse_widths("784, 4096,4096,10") == (784, 4096, 4096, 10)
    for text in ("784", "784,0,10", "784,a,10", "784,,10"):
        with pytest.raises(ValueError, match=rf"cannot read widths {text!r}.*at least two positive integers"):
            parse_widths(text)


def test_layouts_name_data_pipeline_tensor_and_zero():
    assert parse_parallel_layouts("4, 4x1:zero1,4X1:ZERO2,2x2,1x1x4,2x1x2:zero1") == [
        ParallelLayout(4), ParallelLayout(4, zero=1), ParallelLayout(4, zero=2), ParallelLayout(2, 2),
        ParallelLayout(1, 1, 4), ParallelLayout(2, 1, 2, zero=1)]
    assert [layout.name for layout in parse_parallel_layouts("4,1x1x4,4x1:zero2")] == ["4x1", "1x1x4", "4x1:zero2"]
    assert ParallelLayout(2, 3, 4).ranks == 24


@pytest.mark.parametrize("text", ["4y2", "0x2", "1x0x2", "2x2x2x2", "4:zero3", "4x1:zero", ""])
def test_unreadable_layouts_are_named_with_the_syntax(text):
    with pytest.raises(ValueError, match=r"cannot read layout .*positive integers.*:zero1"):
        parse_parallel_layouts(text)


def test_a_pipeline_with_sharded_optimizer_state_is_refused_with_the_layouts_to_write():
    with pytest.raises(ValueError, match=r"'2x2:zero1'.*write 2x1x1:zero1 or drop :zero1"):
        parse_parallel_layouts("2x2:zero1")


def test_the_performance_model_takes_data_and_pipeline_layouts_only():
    assert parse_layouts("8,4x2") == [Layout(8), Layout(4, 2)]
    with pytest.raises(ValueError, match="cannot read layout '1x1x4'.*--memory-per-rank"):
        parse_layouts("1x1x4")


def test_bytes_print_in_the_largest_unit_reached():
    assert [format_bytes(count) for count in (100, 1536, 3 << 20, 2 << 30)] == \
        ["100 B", "1.50 KiB", "3.00 MiB", "2.00 GiB"]


def test_the_cli_offers_the_model_s_optimizers_and_dtypes():
    assert set(cli.MODEL_OPTIMIZERS) == set(OPTIMIZER_STATE_COPIES)
    assert set(cli.MODEL_DTYPES) == set(DTYPE_BYTES)


def test_data_parallel_holds_everything_and_the_activations_of_its_rows():
    # 8 rows per rank; kept per row: ReLU outputs 8 + 6, logits 2, cross-entropy 3 x 2 = 22 values = 88 B;
    # busiest backward moment: the first ReLU's output gradient, mask and input gradient, 8*4 + 8 + 8*4 = 72 B
    assert rank_memory(SMALL, ParallelLayout(2), global_batch=16) == [MemoryReport(432, 432, 864, 8 * (88 + 72))]


def test_optimizers_hold_zero_one_or_two_copies_and_float64_doubles():
    for optimizer, state in (("sgd", 0), ("momentum", 432), ("adam", 864)):
        model = ModelDescription(SMALL.widths, optimizer=optimizer)
        assert rank_memory(model, ParallelLayout(1), 16)[0].optimizer_state == state
    wide = rank_memory(ModelDescription(SMALL.widths, dtype="float64"), ParallelLayout(1), 16)[0]
    assert (wide.parameters, wide.optimizer_state) == (864, 1728)


def test_zero_shards_whole_parameters_in_backward_order():
    # backward order: 2, 12, 6, 48 (rank 0, 68 values), then 8, 32 (rank 1, 40 values); ZeRO-1's gradients stay whole
    reports = rank_memory(SMALL, ParallelLayout(2, zero=1), global_batch=16)
    assert [(r.parameters, r.gradients, r.optimizer_state) for r in reports] == [(432, 432, 544), (432, 432, 320)]
    assert [r.peak_activations for r in reports] == [8 * (88 + 72)] * 2


def test_zero2_keeps_each_rank_s_own_gradients_and_peaks_with_the_buckets_in_backward():
    # own gradients: 68 and 40 values = 272 and 160 B; the 108 values fit one bucket, whole during backward: 432 B
    reports = rank_memory(SMALL, ParallelLayout(2, zero=2), global_batch=16)
    assert [(r.gradients, r.optimizer_state, r.peak_activations) for r in reports] == \
        [(272, 544, 8 * (88 + 72) + 432), (160, 320, 8 * (88 + 72) + 432)]


def test_zero2_peaks_with_three_consecutive_buckets_at_most():
    # six Linear(1024, 1024) in float32: each bias (1024) and weight (1048576, 4 MiB) close a bucket of 4 MiB + 4 KiB;
    # two reduce-scattering and one being written: 3 of the 6 buckets
    model = ModelDescription((1024,) * 7)
    sizes = parameters_in_final_order(model, list(range(6)), 1)
    assert reduce_scattering_bytes(model, sizes, ParallelLayout(4, zero=2)) == 3 * (1024 + 1024 * 1024) * 4
    assert reduce_scattering_bytes(model, sizes, ParallelLayout(4, zero=1)) == 0


def test_tensor_parallel_splits_each_pair_and_keeps_row_biases_and_a_lone_last_layer_whole():
    # column Linear(4, 8/2): 16 + 4; row Linear(8/2, 6): 24 + 6 (bias whole); Linear(6, 2) whole: 14; 64 values
    # kept per row: 4 + 6 + 2 + 6 = 18 values = 72 B; busiest moment: the second ReLU's, 6*4 + 6 + 6*4 = 54 B
    assert rank_memory(SMALL, ParallelLayout(1, 1, 2), global_batch=16) == \
        [MemoryReport(256, 256, 512, 16 * (72 + 54))]


def test_tensor_widths_must_divide():
    with pytest.raises(ValueError, match=r"1x1x3 splits the widths \[8\] over 3 .*\[8\] are not multiples of 3"):
        rank_memory(SMALL, ParallelLayout(1, 1, 3), 16)
    with pytest.raises(ValueError, match="make one Linear layer"):
        rank_memory(ModelDescription((4, 8)), ParallelLayout(1, 1, 2), 16)


def test_a_pipeline_cuts_by_parameters_and_its_first_stage_holds_a_micro_batch_per_stage():
    reports = rank_memory(SMALL, ParallelLayout(1, 2), global_batch=16, micro_batches=4)
    # stages [Linear(4, 8), ReLU] (40 values) and the rest (68 values); micro-batches of 4 rows.
    # Stage 0 keeps, for 2 micro-batches, its ReLU output and the gradient buffer, 16 values = 64 B per row,
    # and its busiest moment is the ReLU's mask and input gradient, 8 + 32 = 40 B.
    # Stage 1 keeps one: its input 8, ReLU output 6, logits 2, cross-entropy 6 = 88 B; the 2 inputs it receives
    # ahead and the input gradient it sends, 3 * 32 = 96 B; busiest moment the first Linear's, (6 + 8) * 4 = 56 B.
    assert reports == [MemoryReport(160, 160, 320, 4 * (2 * 64 + 40)), MemoryReport(272, 272, 544, 4 * (88 + 96 + 56))]


def test_a_pipeline_needs_a_layer_per_stage():
    with pytest.raises(ValueError, match="needs 6 stages but the model has 5 layers"):
        rank_memory(SMALL, ParallelLayout(1, 6), 16, 6)


def test_recompute_keeps_each_pair_s_input_and_recomputes_the_rest_in_backward():
    model = ModelDescription((4, 8, 6, 2), recompute=True)
    # kept per row: the pair's output 6, logits 2, cross-entropy 6 = 56 B; in backward the pair's second forward
    # (8 + 6) and its output gradient 6 join the busiest moment's 72 B: 72 + 80 B
    assert rank_memory(model, ParallelLayout(1), 16) == [MemoryReport(432, 432, 864, 16 * (56 + 152))]
    # recomputing pays for one range's second forward, so it lowers the peak only over several ranges
    widths = (64, *[512] * 16, 16)
    plain, recomputed = (rank_memory(ModelDescription(widths, recompute=flag), ParallelLayout(1), 256)[0]
                         for flag in (False, True))
    assert recomputed.peak_activations < 0.75 * plain.peak_activations


def test_shortfall_is_what_the_rank_lacks():
    report = MemoryReport(100, 100, 200, 50)
    assert (shortfall(report, 450), shortfall(report, 449), shortfall(report, 1000)) == (0, 1, 0)


def test_the_table_says_what_fits_and_how_much_more_the_rest_needs():
    fit = FitQuestion(SMALL, memory_per_rank=3000)
    lines = format_memory_fit(fit, parse_parallel_layouts("2x1,2x1:zero1,1x1x2,1x2"), 16, None).splitlines()
    assert lines == [
        "memory per rank: MLP 4,8,6,2, adam, float32, global batch 16; 2.93 KiB per rank",
        "layout       ranks micro  params MiB  grads MiB  optim MiB  peak act MiB  total MiB  fits",
        "2x1              2     1       0.000      0.000      0.001         0.001      0.003  "
        "does not fit (needs 8 B more)",
        "2x1:zero1        2     1       0.000      0.000      0.001         0.001      0.003  fits",
        "1x1x2            2     1       0.000      0.000      0.000         0.002      0.003  "
        "does not fit (needs 40 B more)",
        "1x2              2     8       0.000      0.000      0.001         0.000      0.001  fits",
    ]  # totals 3008, 2688, 3040 B (see above) and, for 8 micro-batches of 2 rows, 1088 + 2 * 240 = 1568 B


def test_the_command_prints_the_performance_table_then_the_memory_table(tmp_path, capsys):
    source = tmp_path / "scaling.json"
    links = {"allreduce": {"latency_s": 2e-5, "bandwidth_bytes_per_s": 1e9},
             "p2p": {"latency_s": 1e-5, "bandwidth_bytes_per_s": 2e9}}
    run = {"samples_per_s": 1000.0, "step_s": 0.064, "global_batch": 64, "compute_s_per_sample": 1e-4,
           "parameter_bytes": 400000}
    source.write_text(json.dumps({"mode": "strong", "links": links, "runs": {"1": [run]},
                                  "rows": [{"ranks": 1, "samples_per_s": 1000.0}]}))
    assert cli.main(["model", "--from", str(source), "--layouts", "2,1x1x2", "--memory-per-rank", "1GiB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(f"no runs alone in {source}")
    assert lines[3].split()[:4] == ["ranks", "data", "stages", "micro"] and lines[4].split()[:4] == ["2", "2", "1", "1"]
    assert lines[5] == "(no performance prediction for 1x1x2)"
    assert lines[6].startswith(f"memory per rank: MLP {','.join(map(str, builtin_widths()))}, adam, float32, "
                               "global batch 64; 1.00 GiB per rank")
    assert lines[8].startswith("2x1 ") and lines[9].startswith("1x1x2 ") and lines[9].endswith("  fits")


@pytest.mark.parametrize("arguments, message", [
    (["--memory-per-rank", "2GB"], "argument --memory-per-rank: cannot read memory '2GB'"),
    (["--memory-per-rank", "1GiB", "--widths", "784"], "argument --widths: cannot read widths '784'"),
    (["--memory-per-rank", "1GiB", "--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    (["--memory-per-rank", "1GiB", "--layouts", "2x2:zero1"], "'2x2:zero1': sharded optimizer state"),
    (["--memory-per-rank", "1GiB", "--widths", "784,100,10", "--layouts", "1x1x3"], "not multiples of 3"),
    (["--layouts", "1x1x2"], "1x1x2 have no performance prediction.*add --memory-per-rank"),
])
def test_bad_memory_arguments_exit_with_a_clear_error(arguments, message, capsys):
    layouts = [] if "--layouts" in arguments else ["--layouts", "1x1x2"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["model", *layouts, *arguments])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_installed_command_answers_through_a_pipe_without_measuring():
    command = [sys.executable, "-m", "mpiprop.launch", "model", "--layouts", "4x1:zero1,4x1:zero2,1x1x4",
               "--memory-per-rank", "300MiB", "--widths", "784,4096,4096,10", "--batch", "512"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # (784*4096 + 4096) + (4096*4096 + 4096) + (4096*10 + 10) = 20037642 float32 values = 76.438 MiB; ZeRO-1's
    # busiest rank owns the 4096 x 4096 weight, whose Adam state is 2 * 4 * 4096**2 B = 128 MiB; under ZeRO-2 it
    # keeps that weight's gradient (64 MiB) and, in backward, both buckets (76.438 MiB) whole beside 8.520 MiB
    assert result.stdout.splitlines()[2:] == [
        "4x1:zero1        4     1      76.438     76.438    128.000         8.520    289.395  fits",
        "4x1:zero2        4     1      76.438     64.000    128.000        84.957    353.395  does not fit "
        "(needs 53.39 MiB more)",
        "1x1x4            4     1      19.238     19.238     38.477        28.078    105.031  fits"]


def test_a_layout_that_cannot_hold_the_model_is_refused_before_anything_is_measured(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("measured before checking the layouts")
    monkeypatch.setattr("mpiprop.launch.model_command.measure_now", never)
    with pytest.raises(ValueError, match="not multiples of 3"):
        run_model("2,1x1x3", None, None, None, fit=FitQuestion(ModelDescription((8, 10, 8)), 1 << 30))


def test_model_from_a_sweep_prices_each_count_with_its_ranks_measured_alone(tmp_path, capsys):
    """Compute per sample at N ranks: N / the runs alone's samples/s at N (or the most ranks measured below N),
    plus the data-parallel overhead per step spread over each rank's samples; the sweep's exposed allreduce."""
    source = tmp_path / "scaling.json"
    links = {"allreduce": {"latency_s": 2e-5, "bandwidth_bytes_per_s": 1e9},
             "p2p": {"latency_s": 1e-5, "bandwidth_bytes_per_s": 2e9}}
    run = {"samples_per_s": 1000.0, "step_s": 0.064, "global_batch": 64, "compute_s_per_sample": 1e-3,
           "parameter_bytes": 400000}
    alone = {"1": [{"samples_per_s": 1000.0}], "2": [{"samples_per_s": 1400.0}, {"samples_per_s": 1500.0},
                                                     {"samples_per_s": 1600.0}]}
    document = {"mode": "strong", "links": links, "runs": {"1": [run]}, "rows": [{"ranks": 1, "samples_per_s": 1000.0}],
                "alone_runs": alone, "overhead_s": 0.001, "exposed_allreduce": 0.5}
    source.write_text(json.dumps(document))
    assert cli.main(["model", "--from", str(source), "--layouts", "2,4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("contention: compute per rank measured alone (no communication) at 1 ranks "
                               "1000.00 us/sample, 2 ranks 1333.33 us/sample, plus 1.000 ms of data-parallel overhead "
                               "per step; 0.50 of the allreduce exposed"), lines
    two, four = lines[4].split(), lines[5].split()
    assert float(two[5]) == pytest.approx((1 / 750 + 0.001 * 2 / 64) * 32 * 1e3, abs=1e-3)  # 43.667 ms
    assert float(four[5]) == pytest.approx((1 / 750 + 0.001 * 4 / 64) * 16 * 1e3, abs=1e-3)  # 2 ranks stand for 4
    allreduce_two = float(two[8])
    source.write_text(json.dumps({**document, "exposed_allreduce": 1.0}))
    assert cli.main(["model", "--from", str(source), "--layouts", "2"]) == 0
    assert float(capsys.readouterr().out.splitlines()[4].split()[8]) == pytest.approx(2 * allreduce_two, rel=1e-3)
    del document["alone_runs"]
    source.write_text(json.dumps(document))
    assert cli.main(["model", "--from", str(source), "--layouts", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(f"no runs alone in {source}: compute as on the fewest ranks")
    assert float(lines[4].split()[5]) == pytest.approx(1e-3 * 32 * 1e3, abs=1e-3)
