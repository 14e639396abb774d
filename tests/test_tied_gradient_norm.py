"""The Trainer's gradient norm counts a tied weight (embedding and head) once, as clip_grad_norm_ over parameters()."""
import numpy

import mpiprop.network as nn
from mpiprop.network.models.next_token_loss import NextTokenLoss


def tied_model():
    embedding = nn.Embedding(5, 3, dtype=numpy.float64, generator=numpy.random.default_rng(0))
    return nn.Sequential(embedding, nn.LayerNorm(3, dtype=numpy.float64), nn.TiedLinear(embedding))


def test_clipping_in_the_trainer_counts_a_tied_weight_once():
    ids = numpy.random.default_rng(1).integers(0, 5, size=(4, 6))
    x, y = ids[:, :-1], ids[:, 1:]
    trained, expected = tied_model(), tied_model()
    trainer = nn.Trainer(trained, NextTokenLoss(), nn.optim.SGD(trained.parameters(), lr=1.0), clip_grad_norm=0.01,
                         quiet=True, progress=False)
    trainer.train_step(x, y)
    loss = NextTokenLoss()
    loss(expected(x), y)
    expected.backward(loss.backward())
    nn.clip_grad_norm_(expected.parameters(), max_norm=0.01)
    nn.optim.SGD(expected.parameters(), lr=1.0).step()
    for (name, mine), (_, theirs) in zip(trained.named_parameters(), expected.named_parameters()):
        numpy.testing.assert_allclose(mine.data, theirs.data, rtol=0, atol=1e-14, err_msg=name)
