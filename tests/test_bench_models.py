"""The model benchmark runs at tiny sizes and reports its figures in a fixed structure; its FLOP count
matches a count by hand. No timing is asserted."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT = ["--layers", "1", "--heads", "2", "--embed-dim", "16", "--context", "8", "--batch", "2",
            "--steps", "1", "--rounds", "1", "--warmup", "0", "--max-chars", "5000"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.bench_models")


def hand_count(batch, context, layers, embed_dim, heads, vocab):
    """Every matrix product of the forward pass written out with its (m, k, n), then backward's two per product."""
    tokens, head_dim = batch * context, embed_dim // heads
    products = []
    for _ in range(layers):
        products += [(tokens, embed_dim, 3 * embed_dim),  # qkv
                     (tokens, embed_dim, embed_dim),  # proj
                     (tokens, embed_dim, 4 * embed_dim),  # MLP up
                     (tokens, 4 * embed_dim, embed_dim)]  # MLP down
        products += [(context, head_dim, context)] * (batch * heads)  # q @ k^T per (batch, head)
        products += [(context, context, head_dim)] * (batch * heads)  # weights @ v per (batch, head)
    products.append((tokens, embed_dim, vocab))  # tied head
    forward = sum(2 * m * k * n for m, k, n in products)
    return 3 * forward


def test_flop_count_matches_the_hand_count(bench):
    assert bench.gpt_step_flops(2, 3, 1, 4, 5) == 8496  # 3 * (576 + 192 + 768 + 768 + 144 + 144 + 240)
    assert hand_count(2, 3, 1, 4, 2, 5) == 8496
    for config in [(2, 3, 1, 4, 2, 5), (4, 8, 3, 16, 4, 23), (32, 64, 4, 128, 4, 97)]:
        batch, context, layers, embed_dim, heads, vocab = config
        assert bench.gpt_step_flops(batch, context, layers, embed_dim, vocab) == hand_count(*config)


def test_largest_product_is_the_mlp_unless_the_vocabulary_is_wider(bench):
    assert bench.largest_product(32, 64, 128, 97) == (2048, 128, 512)
    assert bench.largest_product(2, 8, 16, 100) == (16, 16, 100)


def test_gpt_and_cnn_parts_report_their_figures(bench, tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "models.json"
    results = bench.main(["--parts", "gpt,cnn", *TINY_GPT, "--cnn-steps", "1", "--cnn-batch", "8",
                          "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    gpt = results["gpt"]
    assert set(gpt["tokens_per_s"]) == set(gpt["mfu"]) == set(gpt["step_ms"]) == {"mpiprop", "torch"}
    assert gpt["ratio"] > 0 and gpt["best_round_ratio"] > 0 and all(v > 0 for v in gpt["mfu"].values())
    assert gpt["max_loss_difference"] <= bench.AGREEMENT_TOLERANCE
    c = gpt["config"]
    assert gpt["flops_per_step"] == hand_count(2, 8, 1, 16, 2, c["vocab_size"])
    assert gpt["matmul_peak"]["shape"] == list(bench.largest_product(2, 8, 16, c["vocab_size"]))
    assert gpt["matmul_peak"]["by"] in gpt["matmul_peak"]["all_gflops"]
    assert set(results["cnn"]["samples_per_second"]) == {"mpiprop", "torch"}
    out = capsys.readouterr().out
    assert "mpiprop / torch" in out and "MFU" in out and "matmul peak" in out


def test_attention_part_times_the_core_against_torch_and_in_one_block(bench, capsys):
    pytest.importorskip("torch")
    from mpiprop.network.layers import attention_math

    blocks_before = attention_math.QUERY_BLOCK_ROWS
    result = bench.main(["--parts", "attention", *TINY_GPT])["attention"]
    assert attention_math.QUERY_BLOCK_ROWS == blocks_before
    assert set(result["contexts"]) == set(bench.ATTENTION_CONTEXTS) and result["head_size"] == 8
    for context, figures in result["contexts"].items():
        assert figures["batch"] * context == bench.ATTENTION_TOKENS
        assert set(figures["ms"]) == {"mpiprop", "mpiprop_one_block", "torch"}
        assert figures["max_output_difference"] < 1e-4
    assert "query blocks" in capsys.readouterr().out


def test_compare_training_trains_both_alike_and_plots(bench, tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    result = bench.main(["--parts", "compare-training", "--epochs", "2", "--windows", "64",
                         "--plot", str(plot)])["compare_training"]
    assert [r["epoch"] for r in result["mpiprop"]] == [r["epoch"] for r in result["torch"]] == [1, 2]
    for ours, theirs in zip(result["mpiprop"], result["torch"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    assert result["relative_difference"] < 1e-4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final validation loss" in capsys.readouterr().out


def test_unknown_parts_are_refused_with_the_choices(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--parts", "gpt,speed"])
    assert "unknown ['speed']; choose among gpt, attention, cnn, data-parallel, compare-training" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--layouts", "pipeline,zero"])
    assert "unknown ['zero']; choose among tensor_parallel, sequence_parallel, pipeline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--batch", "6", "--micro-batches", "4"])
    assert "--batch 6 must be a multiple of --micro-batches 4 for sequence_parallel" in capsys.readouterr().err


@pytest.mark.mpi
def test_data_parallel_part_reports_against_its_ceiling(bench, capsys):
    result = bench.main(["--parts", "data-parallel", *TINY_GPT, "--warmup-steps", "0", "--micro-batches", "2",
                         "--timeout", "240"])
    figures = result["data_parallel"]
    assert figures["ranks"] == 2
    layouts = {"data_parallel", "tensor_parallel", "sequence_parallel", "pipeline"}
    bounds = {"tensor_parallel_bound", "sequence_parallel_bound"}
    assert set(figures["tokens_per_s"]) == {"single", "independent"} | layouts | bounds
    assert set(figures["of_ceiling"]) == set(figures["bound_of_ceiling"]) == set(figures["of_bound"]) == layouts
    assert all(value > 0 for value in figures["of_ceiling"].values()) and figures["weak_scaling_efficiency"] > 0
    assert figures["bound_of_ceiling"]["pipeline"] == pytest.approx(1 - figures["pipeline_schedule"]["bubble"])
    assert figures["of_bound"]["pipeline"] == pytest.approx(figures["of_ceiling"]["pipeline"]
                                                            / figures["bound_of_ceiling"]["pipeline"])
    for name in ("tensor_parallel", "sequence_parallel"):  # one round: the ratios of the medians are the ratios
        tokens = figures["tokens_per_s"]
        assert figures["bound_of_ceiling"][name] == pytest.approx(tokens[name + "_bound"] / tokens["independent"])
        assert figures["of_bound"][name] == pytest.approx(tokens[name] / tokens[name + "_bound"])
    assert 0 < figures["pipeline_schedule"]["bubble"] < 1
    out = capsys.readouterr().out
    assert "tensor parallel T=2" in out and "sequence parallel" in out and "2 pipeline stages" in out
    assert "of the ceiling" in out and "of its bound" in out


@pytest.mark.mpi
def test_communication_free_group_keeps_each_ranks_data_and_waits_for_nobody():
    from mpi_launch import run_mpi

    assert "collectives: local" in run_mpi("communication_free_group.py", 2, timeout=120).stdout


def test_plot_curves_refuses_no_curves_and_uneven_ones(tmp_path):
    pytest.importorskip("matplotlib")
    from mpiprop.network.training.plots import plot_curves

    with pytest.raises(ValueError, match="no curves"):
        plot_curves({}, tmp_path / "x.png", xlabel="epoch", ylabel="loss")
    with pytest.raises(ValueError, match="'torch' has 2 x values but 3 y values"):
        plot_curves({"torch": ([1, 2], [3, 2, 1])}, tmp_path / "x.png", xlabel="epoch", ylabel="loss")
