"""Our Rouge-L (`rouge-score`, eval/rouge.py) vs the reference's (pltrdy `rouge==1.0.1`) on real pairs.

    python benchmarks/rouge_vs_reference.py                                   # Dolly responses vs each other
    python benchmarks/rouge_vs_reference.py --generations runs/eval/generations_dolly.jsonl

Pairs: each `--generations` file written by `python -m eval --out DIR` (prediction vs reference), or, without
one, the 200 held-out Dolly responses each scored against the next one. Prints one JSON line per source:
means on 0-100 of ours (stemmed), ours without the stemmer, and the reference's (`eval.rouge.rouge_l_paper`,
the kit's `rougeL_paper`: as `evaluations.py` scores, an empty prediction or a ValueError gives 0, and
pltrdy's RecursionError gives 0 and is counted), and the mean and max absolute per-pair differences.
See docs/rouge.md for why they differ.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rouge_score.rouge_scorer import RougeScorer

from eval.rouge import rouge_l, rouge_l_paper
from eval.suites import build_suite
from kit.paths import DATA_ROOT_ENV

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def compare(source: str, pairs: list[tuple[str, str]]) -> dict:
    """Means (0-100) of the three scorers over `pairs` (prediction, reference) and their differences."""
    unstemmed = RougeScorer(["rougeL"], use_stemmer=False)
    ours = [100 * rouge_l(p, r) for p, r in pairs]
    ours_raw = [100 * unstemmed.score(r, p)["rougeL"].fmeasure if p.strip() else 0.0 for p, r in pairs]
    paper = [rouge_l_paper(p, r) for p, r in pairs]
    theirs = [100 * (score or 0.0) for score in paper]

    def diffs(scores: list[float]) -> dict:
        gaps = [abs(a - b) for a, b in zip(scores, theirs, strict=True)]
        return {"mean_abs_diff": round(sum(gaps) / len(gaps), 2), "max_abs_diff": round(max(gaps), 2)}

    return {
        "source": source,
        "n": len(pairs),
        "ours": round(sum(ours) / len(ours), 2),
        "ours_no_stemmer": round(sum(ours_raw) / len(ours_raw), 2),
        "reference": round(sum(theirs) / len(theirs), 2),
        "reference_recursion_errors": sum(score is None for score in paper),
        "ours_vs_reference": diffs(ours),
        "ours_no_stemmer_vs_reference": diffs(ours_raw),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=Path, nargs="*", default=[], help="generations_*.jsonl files")
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_ROOT))
    args = parser.parse_args()

    if args.generations:
        for path in args.generations:
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            pairs = [(row["prediction"], row["reference"]) for row in rows]
            print(json.dumps(compare(path.name, pairs)), flush=True)
    else:
        responses = [ex.response for ex in build_suite("dolly", args.data_root)]
        pairs = list(zip(responses, responses[1:] + responses[:1], strict=True))
        print(json.dumps(compare("dolly responses vs the next response", pairs)), flush=True)


if __name__ == "__main__":
    main()
