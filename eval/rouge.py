"""Rouge-L F-measure with Google's `rouge-score`, and its aggregation per task.

    from eval.rouge import rouge_l; rouge_l("the cats sat", "the cat sat down")  # 0.857...

The reference scores with pltrdy `rouge==1.0.1` (`evaluations.py`); docs/rouge.md says how the two differ
and by how much on real pairs. We use `rouge-score` with its Porter stemmer, as the official
Super-NaturalInstructions scorer does (the reference never stems; on our real pairs stemming moves the
scores by well under a point, slightly towards the reference's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rouge_score.rouge_scorer import RougeScorer

_SCORER = RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure in [0, 1] of `prediction` against `reference`; 0.0 for an empty prediction.

    Both texts are lower-cased, split into runs of [a-z0-9] and stemmed (Porter, words over 3 letters);
    the score is the F-measure of the longest common subsequence of the two token lists (precision over
    prediction tokens, recall over reference tokens).
    """
    if not prediction.strip():
        return 0.0
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def summarize(scores: Sequence[float]) -> dict[str, float | int]:
    """`{"rougeL": mean on a 0-100 scale, "n": count}`; a mean of 0.0 when there are no scores."""
    n = len(scores)
    return {"rougeL": 100.0 * sum(scores) / n if n else 0.0, "n": n}


def aggregate(scores: Sequence[float], tasks: Sequence[str]) -> dict:
    """Mean over all examples (as the reference: every example counts once) plus the mean per task.

    Returns `{"rougeL": ..., "n": ..., "per_task": {task: {"rougeL": ..., "n": ...}}}`, means on 0-100,
    tasks in sorted order.
    """
    by_task: dict[str, list[float]] = defaultdict(list)
    for score, task in zip(scores, tasks, strict=True):
        by_task[task].append(score)
    return {**summarize(scores), "per_task": {task: summarize(by_task[task]) for task in sorted(by_task)}}
