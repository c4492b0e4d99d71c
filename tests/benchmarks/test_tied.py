"""The tied-weight measurement script runs on a tiny budget."""

import math

from asv_benchmarks.tied import RULES, fisher_cosines, markov_batches, training_losses


def test_markov_batches_are_next_token_pairs():
    (x, y), *_ = markov_batches(0, 2)
    assert x.shape == y.shape
    assert (x[:, 1:] == y[:, :-1]).all()


def test_measurements_run():
    cosines = fisher_cosines(batches=1)
    assert set(cosines) == set(RULES)
    assert all(-1 <= c <= 1 for values in cosines.values() for c in values)
    losses = training_losses(seeds=2, steps=2, lrs=(0.1,))
    for lr, finals in losses.values():
        assert lr == 0.1 and all(math.isfinite(v) for v in finals)
