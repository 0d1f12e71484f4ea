"""Rouge-L of known pairs, each worked out by hand, by both scorers.

rouge-score lower-cases, keeps runs of [a-z0-9] as tokens, Porter-stems tokens longer than 3 characters
(our choice), and F = 2PR / (P + R) with P = LCS / |prediction tokens| and R = LCS / |reference tokens|.

The paper's scorer (pltrdy rouge 1.0.1, docs/rouge.md): sentences cut at every ".", words split on
spaces, case and punctuation kept, summary-level LCS counted on sets of distinct words, and
F = 2PR / (P + R + 1e-8); an empty prediction or a ValueError scores 0 (the reference's evaluations.py).
"""

from __future__ import annotations

import pytest
from rouge import Rouge

from eval.rouge import PAPER_STACK_FRAMES, aggregate, rouge_l, rouge_l_paper


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


def _paper_f(p: float, r: float) -> float:
    """pltrdy's F from precision and recall (rouge_score.py: 2PR / (P + R + 1e-8))."""
    return 2 * p * r / (p + r + 1e-8)


def _pltrdy(prediction: str, reference: str) -> float:
    """pltrdy's own output, called as the reference's evaluations.py calls it."""
    return Rouge().get_scores([prediction], [reference])[0]["rouge-l"]["f"]


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # distinct words: {the cat sat on mat} vs {the cat is on mat}; LCS words {the cat on mat}: 4/5, 4/5
        ("the cat sat on the mat", "the cat is on the mat", _paper_f(4 / 5, 4 / 5)),
        # no stemmer: running != run, dogs != dog
        ("running dogs", "run dog", 0.0),
        # case kept: The != the; the "." ends the sentence; LCS {cat sat}: 2/3, 2/3
        ("The cat sat.", "the cat sat", _paper_f(2 / 3, 2 / 3)),
        # punctuation stays on the word: cat, != cat; prediction {the cat, dog}, reference {the cat dog}
        ("the cat, the dog", "the cat the dog", _paper_f(2 / 3, 2 / 3)),
        # repeated words count once: {a} vs {a}
        ("a a a", "a", _paper_f(1.0, 1.0)),
        # "Hello. " is the sentences ["Hello", ""]: words {Hello, ""}; reference {Hello, World}; LCS {Hello}
        ("Hello. ", "Hello. World", _paper_f(1 / 2, 1 / 2)),
        # "3.5" splits into sentences "It costs 3" and "5 dollars": {It costs 3 5 dollars} vs 4 words, LCS 4
        ("It costs 3.5 dollars", "It costs 3 dollars", _paper_f(4 / 5, 4 / 4)),
    ],
)
def test_rouge_l_paper_matches_pltrdy_and_the_hand_count(prediction: str, reference: str, expected: float):
    score = rouge_l_paper(prediction, reference)
    assert score == _pltrdy(prediction, reference)  # pltrdy's own output, bit for bit
    assert score == pytest.approx(expected, abs=1e-12)


def test_rouge_l_paper_scores_zero_where_the_reference_does() -> None:
    assert rouge_l_paper("", "a reference") == 0.0  # evaluations.py: an empty prediction is 0
    with pytest.raises(ValueError):
        _pltrdy("...", "a reference")  # no sentence left: pltrdy raises, evaluations.py catches it as 0
    assert rouge_l_paper("...", "a reference") == 0.0
    assert rouge_l_paper("a b", "...") == 0.0  # the same ValueError from an empty reference


def _sentence(words: int) -> str:
    return " ".join(f"w{i}" for i in range(words))  # one sentence, no "."


def test_rouge_l_paper_overflow_on_a_very_long_sentence_is_none_and_counted() -> None:
    # pltrdy walks the LCS table back one frame per step: a 1,500-word reference sentence against a
    # prediction matching its first word takes ~1,500 frames
    with pytest.raises(RecursionError):
        _pltrdy("w0", _sentence(1500))  # pltrdy itself, at Python's default recursion limit
    assert rouge_l_paper("w0", _sentence(1500)) is None
    assert (
        rouge_l_paper(_sentence(400), _sentence(400))
        == _pltrdy(_sentence(400), _sentence(400))
        == _paper_f(1.0, 1.0)
    )
    assert rouge_l_paper("w0", _sentence(400)) == _pltrdy("w0", _sentence(400)) == _paper_f(1.0, 1 / 400)
    paper = [rouge_l_paper("w0", _sentence(1500)), rouge_l_paper("w0 w1", "w0 w1")]
    result = aggregate([1.0, 1.0], ["x", "x"], paper=paper)
    assert result["rougeL_paper"] == pytest.approx(50.0)  # the overflow scores 0
    errors = result["per_task"]["x"]["rougeL_paper_recursion_errors"]
    assert result["rougeL_paper_recursion_errors"] == errors == 1


def test_rouge_l_paper_overflow_does_not_depend_on_the_callers_stack_depth() -> None:
    def nested(depth: int, reference: str) -> float | None:
        return rouge_l_paper("w0", reference) if depth == 0 else nested(depth - 1, reference)

    edge = [_sentence(n) for n in range(PAPER_STACK_FRAMES - 40, PAPER_STACK_FRAMES + 10)]
    shallow = [rouge_l_paper("w0", ref) is None for ref in edge]
    assert any(shallow) and not all(shallow)  # the overflow threshold lies inside this range
    assert [nested(300, ref) is None for ref in edge] == shallow


def test_aggregate_means_over_examples_and_per_task_on_0_100_scale() -> None:
    # all: (1 + 0.25 + 0) / 3 = 41.67; task x: (1 + 0) / 2 = 50; task y: 25
    result = aggregate([1.0, 0.25, 0.0], ["x", "y", "x"])
    assert result["rougeL"] == pytest.approx(125 / 3)
    assert result["n"] == 3
    assert result["per_task"] == {"x": {"rougeL": 50.0, "n": 2}, "y": {"rougeL": 25.0, "n": 1}}


def test_aggregate_with_paper_scores_means_them_per_task() -> None:
    # paper: all (0.5 + 1 + 0) / 3 = 50; x: (0.5 + 0) / 2 = 25; y: 100
    result = aggregate([1.0, 0.25, 0.0], ["x", "y", "x"], paper=[0.5, 1.0, 0.0])
    assert result["rougeL_paper"] == pytest.approx(50.0) and result["rougeL_paper_recursion_errors"] == 0
    assert result["per_task"]["x"]["rougeL_paper"] == pytest.approx(25.0)
    assert result["per_task"]["y"] == {
        "rougeL": 25.0,
        "rougeL_paper": 100.0,
        "rougeL_paper_recursion_errors": 0,
        "n": 1,
    }


def test_aggregate_of_nothing_is_zero() -> None:
    assert aggregate([], []) == {"rougeL": 0.0, "n": 0, "per_task": {}}


def test_aggregate_rejects_misaligned_inputs() -> None:
    with pytest.raises(ValueError):
        aggregate([1.0], ["x", "y"])
