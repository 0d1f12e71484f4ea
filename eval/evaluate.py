"""Zero-shot Rouge-L of a model on the eval suites: generate, score, aggregate, write.

    from eval.evaluate import evaluate
    evaluate(model, tokenizer, ("ni",), data_root="../shared/data", limit=20, out_dir=Path("out"))

Reference behaviour kept (`evaluations.py`): greedy decoding, 128 new tokens, the prediction is the
decoded new tokens, an empty prediction scores 0, the mean is over examples. Changed: prompts are
batched (same tokens, see eval/generate.py). Every generation is scored twice: `rougeL` with
`rouge-score` (the kit's scale) and `rougeL_paper` with the paper's pltrdy scorer (see docs/rouge.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from eval.generate import generate_batched
from eval.rouge import aggregate, rouge_l, rouge_l_paper
from eval.suites import SUITES, build_suite
from kit.data.examples import Example


def evaluate(
    model,
    tokenizer,
    suites: Sequence[str] = SUITES,
    *,
    data_root: Path | str | None = None,
    limit: int | None = None,
    seed: int = 42,
    out_dir: Path | None = None,
    dolly_size: int | None = 200,
    heldout_category: str = "summarization",
    max_new_tokens: int = 128,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Per suite `{"rougeL", "rougeL_paper": means 0-100, "rougeL_paper_recursion_errors", "n": count,
    "per_task": {task: the same keys}}` (see `eval.rouge.aggregate`).

    `dolly` scores a seeded `dolly_size` sample (None: all) of the held-out `heldout_category`.

    With `out_dir`, also writes `generations_<suite>.jsonl` (one line per example) and
    `rouge_<suite>.json` (the result and the settings that produced it).
    """
    settings = {
        "seed": seed,
        "limit": limit,
        "dolly_size": dolly_size,
        "heldout_category": heldout_category,
        "max_new_tokens": max_new_tokens,
    }
    results = {}
    for name in suites:
        examples = build_suite(
            name, data_root, seed=seed, dolly_size=dolly_size, heldout_category=heldout_category, limit=limit
        )
        prompts = [ex.prompt for ex in examples]
        predictions = generate_batched(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
        )
        pairs = list(zip(predictions, [ex.response for ex in examples], strict=True))
        scores = [rouge_l(pred, ref) for pred, ref in pairs]
        paper = [rouge_l_paper(pred, ref) for pred, ref in pairs]
        results[name] = aggregate(scores, [ex.task for ex in examples], paper)
        if out_dir is not None:
            summary = {**results[name], "settings": settings}
            _write(Path(out_dir), name, examples, predictions, scores, paper, summary)
    return results


def _write(
    out_dir: Path,
    name: str,
    examples: list[Example],
    preds: list[str],
    scores: list[float],
    paper: list[float | None],
    summary: dict,
) -> None:
    """`generations_<name>.jsonl` (one line per example) and `rouge_<name>.json` (`summary`).

    A line's `rougeL_paper` is 0.0 where the paper's scorer overflowed, flagged by
    `rougeL_paper_recursion_error: true`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"generations_{name}.jsonl", "w") as f:
        for ex, pred, score, ref_score in zip(examples, preds, scores, paper, strict=True):
            row = {"prompt": ex.prompt, "reference": ex.response, "prediction": pred, "task": ex.task}
            scored = {"rougeL": score, "rougeL_paper": ref_score or 0.0}
            if ref_score is None:
                scored["rougeL_paper_recursion_error"] = True
            f.write(json.dumps({**row, **scored}) + "\n")
    (out_dir / f"rouge_{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
