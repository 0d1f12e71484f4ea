"""Prompt templates of the reference (`utils_data/llm_dataset.py`, `natural_instruction_loader.py`).

The response is appended to the prompt with no separator, followed by the tokenizer's EOS token.
"""

from __future__ import annotations

DOLLY_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response for the task request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
DOLLY_NO_CONTEXT = (
    "Below is an instruction that describes a task. Write a response for the task request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
NI_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
NI_PLAIN = "{instruction}\n\nInput: {input}\n\nOutput:"


def dolly_prompt(instruction: str, context: str) -> str:
    """The Dolly prompt: with an Input section only when the record has a context."""
    template = DOLLY_WITH_CONTEXT if context else DOLLY_NO_CONTEXT
    return template.format_map({"instruction": instruction, "input": context})


def ni_prompt(definition: str, task_input: str, use_prompts: bool = True) -> str:
    """The Natural Instructions prompt (reference `--use_prompts` on by default)."""
    template = NI_TEMPLATE if use_prompts else NI_PLAIN
    return template.format_map({"instruction": definition, "input": task_input})
