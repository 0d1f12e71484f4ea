"""PEFT adapters of the baselines: LoRA (FedIT), P-tuning (FedPTuning), prompt tuning (FedPrompt).

Settings follow the authors' same-harness baselines (FedHDS) and the paper; every value is a recipe knob.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora(net: torch.nn.Module, hp: Mapping) -> torch.nn.Module:
    """LoRA of rank `lora_r` on `lora_targets` (paper: q, k, v, o, gate, up, down projections)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=hp["lora_r"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules=list(hp["lora_targets"] or LORA_TARGETS),
    )
    return get_peft_model(net, config)


def p_tuning(net: torch.nn.Module, hp: Mapping) -> torch.nn.Module:
    """P-tuning: `num_virtual_tokens` virtual tokens from an MLP prompt encoder."""
    from peft import PromptEncoderConfig, get_peft_model

    config = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=hp["num_virtual_tokens"],
        encoder_reparameterization_type="MLP",
        encoder_hidden_size=hp["prompt_encoder_hidden_size"] or net.config.hidden_size,
        encoder_dropout=hp["prompt_encoder_dropout"],
    )
    return get_peft_model(net, config)


def prompt_tuning(net: torch.nn.Module, hp: Mapping) -> torch.nn.Module:
    """Prompt tuning: `num_virtual_tokens` randomly initialised soft-prompt embeddings."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=hp["num_virtual_tokens"],
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    return get_peft_model(net, config)


ADAPTERS = {"lora": lora, "p_tuning": p_tuning, "prompt_tuning": prompt_tuning}
