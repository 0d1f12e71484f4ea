"""Rouge-L F-measure by two scorers, and their aggregation per task.

    from eval.rouge import rouge_l, rouge_l_paper
    rouge_l("the cats sat", "the cat sat down")        # 0.857... (rouge-score, stemmed: the kit's)
    rouge_l_paper("the cat sat on the mat", "the cat is on the mat")   # 0.8 (pltrdy rouge: the paper's)

`rougeL` is Google's `rouge-score` with its Porter stemmer, as the official Super-NaturalInstructions
scorer. `rougeL_paper` is pltrdy `rouge==1.0.1` called as the reference's `evaluations.py` calls it (the
scorer of the paper's Table 2). docs/rouge.md says how the two differ and by how much on real pairs.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence

from rouge import Rouge
from rouge_score.rouge_scorer import RougeScorer

_SCORER = RougeScorer(["rougeL"], use_stemmer=True)
_PAPER_SCORER = Rouge()  # default metrics (rouge-1, -2, -l), as evaluations.py builds it
PAPER_STACK_FRAMES = 1000
"""Python frames pltrdy may use above its caller: Python's default recursion limit. Its Rouge-L rebuilds
each LCS recursively, one frame per word pair it walks back, so a sentence of about 1,000 words raises
RecursionError, where the reference's run would stop. Counting from the caller's depth makes the
outcome a property of the pair, not of how deep the kit's stack happens to be."""


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure in [0, 1] of `prediction` against `reference`; 0.0 for an empty prediction.

    Both texts are lower-cased, split into runs of [a-z0-9] and stemmed (Porter, words over 3 letters);
    the score is the F-measure of the longest common subsequence of the two token lists (precision over
    prediction tokens, recall over reference tokens).
    """
    if not prediction.strip():
        return 0.0
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def rouge_l_paper(prediction: str, reference: str) -> float | None:
    """Rouge-L F in [0, 1] as the paper scored it; None where pltrdy's recursion overflows (counts as 0).

    Reference behaviour (`evaluations.py`): `Rouge().get_scores([prediction], [reference])[0]["rouge-l"]
    ["f"]`, 0.0 for an empty prediction or a ValueError (e.g. a prediction with no sentence left, "...").
    pltrdy's RecursionError on a sentence of ~1,000 words (see `PAPER_STACK_FRAMES`), which the reference
    does not catch, returns None: callers score it 0 and count it.
    """
    if prediction == "":
        return 0.0
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + PAPER_STACK_FRAMES)
    try:
        return _PAPER_SCORER.get_scores([prediction], [reference])[0]["rouge-l"]["f"]
    except ValueError:
        return 0.0
    except RecursionError:
        return None
    finally:
        sys.setrecursionlimit(limit)


def _stack_depth() -> int:
    """The number of Python frames on the stack (this function's included)."""
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def summarize(scores: Sequence[float], paper: Sequence[float | None] | None = None) -> dict:
    """`{"rougeL": mean on a 0-100 scale, "n": count}`; a mean of 0.0 when there are no scores.

    With `paper` (`rouge_l_paper` per example) also `rougeL_paper` (its mean, None as 0) and
    `rougeL_paper_recursion_errors` (how many were None).
    """
    n = len(scores)
    out: dict = {"rougeL": 100.0 * sum(scores) / n if n else 0.0}
    if paper is not None:
        out["rougeL_paper"] = 100.0 * sum(p or 0.0 for p in paper) / n if n else 0.0
        out["rougeL_paper_recursion_errors"] = sum(p is None for p in paper)
    return {**out, "n": n}


def aggregate(
    scores: Sequence[float], tasks: Sequence[str], paper: Sequence[float | None] | None = None
) -> dict:
    """Mean over all examples (as the reference: every example counts once) plus the mean per task.

    Returns `{"rougeL": ..., "n": ..., "per_task": {task: {"rougeL": ..., "n": ...}}}`, means on 0-100,
    tasks in sorted order; with `paper` (aligned with `scores`) each level also carries `rougeL_paper` and
    `rougeL_paper_recursion_errors` (see `summarize`).
    """
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, task in enumerate(tasks):
        by_task[task].append(i)
    if len(scores) != len(tasks) or (paper is not None and len(paper) != len(scores)):
        raise ValueError(f"{len(scores)} scores, {len(tasks)} tasks and paper scores are not aligned")

    def part(idx: list[int]) -> dict:
        return summarize([scores[i] for i in idx], None if paper is None else [paper[i] for i in idx])

    return {**summarize(scores, paper), "per_task": {task: part(by_task[task]) for task in sorted(by_task)}}
