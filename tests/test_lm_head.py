"""The eval loss computed one example at a time equals the batched formula on full logits, in float32 and
under bfloat16 autocast, and leaves the model's forward as it was."""

from __future__ import annotations

import torch

from kit.lm_head import head_inputs
from kit.module import FedKSeedModule

from .conftest import tiny_llama


def _module(dtype: str = "float32") -> FedKSeedModule:
    module = FedKSeedModule(model="unused", forward_dtype=dtype)
    module.net = tiny_llama()
    return module


def _batch() -> dict:
    """Three rows: responses starting at 7, 3 and 5; right padding on rows 1 and 2."""
    ids = torch.randint(3, 128, (3, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :7] = -100
    labels[1, :3] = -100
    labels[1, 9:] = -100
    labels[2, :5] = -100
    labels[2, 11:] = -100
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 11:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _batched_formula(module: FedKSeedModule, batch: dict) -> torch.Tensor:
    """The eval loss as it was: full-vocabulary logits of every position of the batch at once."""
    with module._autocast():
        logits = module.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    tok = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    mask = (labels != -100).float()
    return (tok * mask).sum(1) / mask.sum(1)


def test_example_losses_equal_the_batched_full_logits_formula() -> None:
    module, batch = _module(), _batch()
    got = module.example_losses(batch)
    torch.testing.assert_close(got, _batched_formula(module, batch), rtol=1e-6, atol=1e-6)
    assert len(set(got.tolist())) == 3  # three different examples, three different losses


def test_example_losses_under_bfloat16_autocast_equal_the_batched_formula() -> None:
    module, batch = _module("bfloat16"), _batch()
    got = module.example_losses(batch)
    torch.testing.assert_close(got, _batched_formula(module, batch), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, _batched_formula(_module(), batch), rtol=0, atol=1e-5)  # bf16 ran


def test_head_inputs_skips_the_projection_and_removes_itself() -> None:
    net, batch = tiny_llama(), _batch()
    with torch.no_grad(), head_inputs(net) as captured:
        out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=4)
    assert out.logits.shape == (3, 0, 128)  # no logits were computed inside the block
    assert captured.hidden.shape == (3, 4, 32)
    with torch.no_grad():
        after = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=4)
    torch.testing.assert_close(after.logits, net.get_output_embeddings()(captured.hidden))


def test_eval_loss_projects_one_example_at_a_time() -> None:
    module, batch = _module(), _batch()
    shapes = []
    head = module.net.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
    try:
        module.example_losses(batch)
    finally:
        hook.remove()
    # the model's own call sees no positions; then one [1 x positions x vocab] block per example
    assert shapes == [(3, 0, 128)] + [(1, 9, 128)] * 3  # positions 2..10 predict the labels at 3..11
