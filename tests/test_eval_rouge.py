"""Rouge-L of known pairs, each worked out by hand.

rouge-score lower-cases, keeps runs of [a-z0-9] as tokens, Porter-stems tokens longer than 3 characters
(our choice), and F = 2PR / (P + R) with P = LCS / |prediction tokens| and R = LCS / |reference tokens|.
"""

from __future__ import annotations

import pytest

from eval.rouge import aggregate, rouge_l


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # LCS "the cat on the mat" = 5; P = 5/6, R = 5/6, F = 5/6
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
        # LCS "the cat sat" = 3; P = 3/3, R = 3/4, F = 2 * 1 * 3/4 / (7/4) = 6/7
        ("the cat sat", "the cat sat down", 6 / 7),
        # case and punctuation are dropped by the tokenizer: the same two tokens, F = 1
        ("Hello, World!", "hello world", 1.0),
        # a subsequence keeps order: LCS of [b a] and [a b] is 1; P = R = 1/2, F = 1/2
        ("b a", "a b", 0.5),
        # repeated words: LCS 1; P = 1/3, R = 1/1, F = 2 * (1/3) / (4/3) = 1/2
        ("a a a", "a", 0.5),
        # stemming: running -> run, dogs -> dog; the same two tokens, F = 1
        ("running dogs", "run dog", 1.0),
        # [the, studi] vs [studi]: LCS 1; P = 1/2, R = 1/1, F = 2 * (1/2) / (3/2) = 2/3
        ("The studies", "study", 2 / 3),
        ("completely different", "nothing shared", 0.0),
    ],
)
def test_rouge_l_matches_hand_computed_f_measure(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize("prediction", ["", "   ", "\n"])
def test_empty_prediction_scores_zero(prediction: str) -> None:
    assert rouge_l(prediction, "the reference") == 0.0


def test_aggregate_means_over_examples_and_per_task_on_0_100_scale() -> None:
    # all: (1 + 0.25 + 0) / 3 = 41.67; task x: (1 + 0) / 2 = 50; task y: 25
    result = aggregate([1.0, 0.25, 0.0], ["x", "y", "x"])
    assert result["rougeL"] == pytest.approx(125 / 3)
    assert result["n"] == 3
    assert result["per_task"] == {"x": {"rougeL": 50.0, "n": 2}, "y": {"rougeL": 25.0, "n": 1}}


def test_aggregate_of_nothing_is_zero() -> None:
    assert aggregate([], []) == {"rougeL": 0.0, "n": 0, "per_task": {}}


def test_aggregate_rejects_misaligned_inputs() -> None:
    with pytest.raises(ValueError):
        aggregate([1.0], ["x", "y"])
