"""The Pareto-aware successive-halving rule and its guard against rungs that do not yet predict the end of
training (nas_distill/search/pruner.py), on hand-made rung results."""

import itertools

import numpy as np
import pytest

from nas_distill.search.pruner import (
    MIN_AGREEMENT,
    MIN_FINISHED,
    RungResult,
    decide,
    default_fractions,
    dominates,
    rung_agreement,
    rung_steps,
    successive_halving,
)


def result(number, accuracy, latency=None, final=None):
    """A trial at a rung, in minimize form: accuracy negated; latency as it is; ``final``: its final
    accuracy when it finished."""
    return RungResult(number, (-accuracy,), () if latency is None else (latency,),
                      None if final is None else (-final,))


def test_a_dominated_slow_student_is_pruned_and_a_fast_one_at_the_same_accuracy_is_not():
    # Six students at the rung: three fast (1 ms) and three slow (5 ms) ones, the slow ones learning faster.
    # All six finished, in the order their rung values gave: the rung predicts.
    others = [result(0, 0.80, 5.0, 0.95), result(1, 0.78, 5.0, 0.93), result(2, 0.76, 5.0, 0.92),
              result(3, 0.50, 1.0, 0.90), result(4, 0.48, 1.0, 0.88), result(5, 0.47, 1.0, 0.86)]
    slow = result(10, 0.55, 5.0)
    fast = result(11, 0.55, 1.0)
    slow_decision = decide(slow, others, eta=3)
    fast_decision = decide(fast, others, eta=3)
    assert not slow_decision.keep
    assert "dominate" in slow_decision.reason
    # The fast student has the best accuracy among the students at least as fast as... none are faster:
    # every other is at least as slow, and it ranks 4th of 7 by accuracy, but nothing dominates it.
    assert fast_decision.keep


def test_a_fast_student_is_compared_only_with_students_at_least_as_slow():
    # Everything slower is far more accurate: a plain ASHA would stop the fast student.
    others = [result(i, 0.9 + i / 100, 10.0) for i in range(6)]
    fast = result(9, 0.3, 0.5)
    assert successive_halving(fast, others, eta=3).keep
    # A slow student as weak as the fast one is stopped: six peers, top 1/3 is 2, and dominated.
    slow = result(9, 0.3, 10.0)
    assert not successive_halving(slow, others, eta=3).keep


def test_too_few_peers_keeps_the_trial():
    assert successive_halving(result(5, 0.1, 3.0), [result(0, 0.9, 3.0)], eta=3).keep
    assert "too few" in successive_halving(result(5, 0.1, 3.0), [result(0, 0.9, 3.0)], eta=3).reason


def test_without_known_metrics_it_is_asynchronous_successive_halving():
    others = [result(i, acc) for i, acc in enumerate([0.9, 0.8, 0.7, 0.6, 0.5])]
    # 6 peers, top 6 // 3 = 2: 0.85 is second, kept; 0.65 is fourth and dominated (one objective).
    assert successive_halving(result(9, 0.85), others, eta=3).keep
    assert not successive_halving(result(9, 0.65), others, eta=3).keep


def test_a_tie_does_not_push_a_student_out_whatever_its_number():
    others = [result(5, 0.9), result(6, 0.5), result(7, 0.1), result(8, 0.1), result(9, 0.1)]
    # 6 peers, keep 2: only 0.9 is strictly better than 0.5, so 0.5 ranks second, asked before or after.
    assert successive_halving(result(2, 0.5), others, eta=3).keep
    assert successive_halving(result(12, 0.5), others, eta=3).keep
    # Many students at one value (the majority-class rate early in training): none is stopped for a tie,
    # but one below them is.
    crowd = [result(i, 0.49) for i in range(8)]
    assert successive_halving(result(20, 0.49), crowd, eta=3).keep
    assert not successive_halving(result(21, 0.30), crowd, eta=3).keep


def brute_force(own, others, eta):
    """The rule spelled out independently, by enumeration."""
    def joint(r):
        return np.array(r.partial + r.known)

    peers = [own] + [o for o in others if all(a >= b for a, b in zip(o.known, own.known))]
    if len(peers) < eta:
        return True
    better = sum(1 for p in peers if p.partial[0] < own.partial[0])
    if better < max(1, len(peers) // eta):
        return True
    return not any(np.all(joint(o) <= joint(own)) and np.any(joint(o) < joint(own)) for o in others)


@pytest.mark.parametrize("seed", range(5))
def test_the_rule_agrees_with_an_enumeration_on_random_rungs(seed):
    rng = np.random.default_rng(seed)
    results = [RungResult(i, (-float(rng.choice([0.2, 0.4, 0.5, 0.6, 0.8])),), (float(rng.choice([1, 2, 3])),))
               for i in range(12)]
    for own in results:
        others = [r for r in results if r is not own]
        for eta in (2, 3, 4):
            assert successive_halving(own, others, eta).keep == brute_force(own, others, eta), (own, eta)


def test_the_decision_does_not_depend_on_the_order_of_the_others():
    others = [result(i, acc, lat) for i, (acc, lat) in enumerate([(0.9, 3), (0.4, 1), (0.6, 2), (0.7, 3)])]
    own = result(9, 0.5, 2)
    decisions = {successive_halving(own, list(p), 2) for p in itertools.permutations(others)}
    assert len(decisions) == 1


def test_several_expensive_objectives_rank_by_non_dominated_sorting():
    # (accuracy, loss) both partial; own is dominated by two of five peers -> rank 1 (second front).
    others = [RungResult(0, (-0.9, 0.1)), RungResult(1, (-0.8, 0.2)), RungResult(2, (-0.3, 0.9)),
              RungResult(3, (-0.2, 0.95)), RungResult(4, (-0.1, 0.99))]
    own = RungResult(9, (-0.7, 0.3))
    assert dominates(others[0].partial, own.partial) and dominates(others[1].partial, own.partial)
    # 6 peers, keep 2; the first front is trials 0 and 1 (the rest are dominated by them): own is not kept.
    assert not successive_halving(own, others, eta=3).keep
    assert successive_halving(RungResult(9, (-0.95, 0.05)), others, eta=3).keep



# ---------------------------------------------------------------------- a rung must have shown it predicts
def kendall_tau_b(xs, ys):
    """Kendall's tau-b spelled out over pairs: (concordant - discordant) / sqrt of the untied pairs."""
    pairs = list(itertools.combinations(range(len(xs)), 2))
    s = sum(np.sign(xs[i] - xs[j]) * np.sign(ys[i] - ys[j]) for i, j in pairs)
    untied_x = sum(1 for i, j in pairs if xs[i] != xs[j])
    untied_y = sum(1 for i, j in pairs if ys[i] != ys[j])
    return s / np.sqrt(untied_x * untied_y)


@pytest.mark.parametrize("seed", range(4))
def test_rung_agreement_is_kendalls_tau_b_over_the_finished_trials(seed):
    rng = np.random.default_rng(seed)
    partial = rng.choice([0.3, 0.5, 0.6, 0.7], size=9)  # ties, as at an early rung
    final = partial + rng.normal(0, 0.1, size=9)
    results = [result(i, a, 1.0, f) for i, (a, f) in enumerate(zip(partial, final))]
    results += [result(20, 0.99, 1.0), result(21, 0.01, 1.0)]  # stopped: no final value, left out
    agreement = rung_agreement(results)
    assert agreement.finished == 9
    assert agreement.tau == pytest.approx(kendall_tau_b(-partial, -final), abs=1e-9)


def test_a_rung_that_has_not_shown_it_predicts_stops_nobody():
    slow = result(10, 0.30, 5.0)
    ranked = [0.80, 0.78, 0.76, 0.70, 0.68, 0.66]
    # The rule alone stops it: six peers ahead, and dominated.
    unfinished = [result(i, a, 5.0) for i, a in enumerate(ranked)]
    assert not successive_halving(slow, unfinished, eta=3).keep
    # No finished trial yet, or fewer than MIN_FINISHED: it goes on, and the reason says why.
    decision = decide(slow, unfinished, eta=3)
    assert decision.keep and "only 0 finished trials" in decision.reason
    few = [result(i, a, 5.0, a + 0.1) for i, a in enumerate(ranked[:MIN_FINISHED - 1])]
    assert decide(slow, few + unfinished[MIN_FINISHED - 1:], eta=3).keep
    # Finished ones whose final order is the reverse of their rung order: the rung misleads, it goes on.
    reversed_ = [result(i, a, 5.0, 1.5 - a) for i, a in enumerate(ranked)]
    assert rung_agreement(reversed_).tau < MIN_AGREEMENT
    assert decide(slow, reversed_, eta=3).keep
    # Every finished one at one rung value (the majority-class rate early in training): no order, goes on.
    crowd = [result(i, 0.49, 5.0, 0.6 + i / 50) for i in range(6)]
    assert rung_agreement(crowd).tau == 0.0
    assert decide(result(10, 0.30, 5.0), crowd, eta=3).keep
    # Finished ones in their rung order: the rule's stop stands, with the agreement in the reason.
    agreeing = [result(i, a, 5.0, a + 0.1) for i, a in enumerate(ranked)]
    assert rung_agreement(agreeing).tau == pytest.approx(1.0)
    stop = decide(slow, agreeing, eta=3)
    assert not stop.keep and "Kendall tau 1.00" in stop.reason

def test_rung_steps_and_default_fractions():
    assert default_fractions(3) == [1 / 9, 1 / 3]
    assert rung_steps(450, default_fractions(3)) == [50, 150]
    assert rung_steps(2, [0.1, 0.5, 0.9]) == [1]
    assert rung_steps(1, [0.5]) == []
