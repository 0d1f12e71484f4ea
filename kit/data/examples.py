"""One instruction example, as every data source yields it and every consumer (training, eval) reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """A prompt (template already applied), its reference response, and the task/category it belongs to."""

    prompt: str
    response: str
    task: str
