"""Each Dropout layer draws from a stream of its own, restored by checkpoints and independent of the others."""
import numpy

import mpiprop.network as nn
from mpiprop.network.compute import rng


def two_dropouts():
    nn.manual_seed(4)
    return nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5))


def test_dropout_layers_of_one_model_draw_different_masks_and_a_model_built_alike_draws_the_same():
    x = numpy.ones((6, 40), dtype=numpy.float32)
    model = two_dropouts()
    first, second = model[0].forward(x)[0], model[1].forward(x)[0]
    assert not numpy.array_equal(first, second)
    again = two_dropouts()
    assert numpy.array_equal(again[0].forward(x)[0], first) and numpy.array_equal(again[1].forward(x)[0], second)


def test_a_batch_drawn_in_pieces_gets_the_rows_of_the_whole_batchs_mask():
    x = numpy.ones((7, 9), dtype=numpy.float32)
    whole = two_dropouts()[1].forward(x)[0]
    layer = two_dropouts()[1]
    pieces = [layer.forward(x[:3])[0], layer.forward(x[3:5])[0], layer.forward(x[5:])[0]]
    assert numpy.array_equal(numpy.concatenate(pieces), whole)


def test_the_random_state_restores_every_stream():
    x = numpy.ones((5, 8), dtype=numpy.float32)
    model = two_dropouts()
    model[1].forward(x)
    nn.manual_seed(5)  # as a script does to give each rank masks of its own, after building the model
    model[0].forward(x)
    state = rng.get_rng_state()
    expected = [model[0].forward(x)[0], model[1].forward(x)[0]]
    model[0].forward(x)
    rng.set_rng_state(state)
    assert all(numpy.array_equal(layer.forward(x)[0], mask) for layer, mask in zip(model, expected))


def test_two_models_built_after_the_same_seed_draw_alike_from_streams_of_their_own():
    x = numpy.ones((4, 30), dtype=numpy.float32)
    first, second = two_dropouts(), two_dropouts()
    masks = [first[0].forward(x)[0] for _ in range(2)]
    assert numpy.array_equal(second[0].forward(x)[0], masks[0])  # the first model's draws left it where it was
    assert numpy.array_equal(second[0].forward(x)[0], masks[1])


def test_a_row_window_gives_a_shard_the_rows_of_the_global_batchs_mask_and_moves_past_the_whole_batch():
    x = numpy.ones((7, 9), dtype=numpy.float32)
    whole = two_dropouts()[1]
    expected = [whole.forward(x)[0], whole.forward(x)[0]]
    layer = two_dropouts()[1]
    with rng.row_window(3, 7):
        shards = [layer.forward(x[3:5])[0], layer.forward(x[3:5])[0]]
    assert all(numpy.array_equal(shard, mask[3:5]) for shard, mask in zip(shards, expected))


def test_rows_within_a_window_count_from_the_windows_offset_and_keep_its_draw():
    x = numpy.ones((7, 9), dtype=numpy.float32)
    expected = two_dropouts()[1].forward(x)[0]
    alone, nested = two_dropouts()[1], two_dropouts()[1]
    with rng.rows_within(3, 7):  # no enclosing window: the same as row_window(3, 7)
        assert numpy.array_equal(alone.forward(x[3:5])[0], expected[3:5])
    with rng.row_window(2, 7), rng.rows_within(1, 4):  # rows 1.. of the window's rows 2..5: global rows 3..
        assert numpy.array_equal(nested.forward(x[3:5])[0], expected[3:5])
