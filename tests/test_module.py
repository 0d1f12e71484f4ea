import torch

from kit.module import FedKSeedModule

from .conftest import tiny_llama


def _module():
    module = FedKSeedModule(model="unused")
    module.net = tiny_llama()
    return module


def _batch():
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :6] = -100  # response starts at 6 in row 0 ...
    labels[1, :4] = -100  # ... and at 4 in row 1
    labels[1, 9] = -100  # padding
    mask = torch.ones_like(ids)
    mask[1, 9] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _full_logits_loss(module, batch):
    logits = module.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )


def test_loss_on_response_logits_only_equals_full_logits_loss():
    module, batch = _module(), _batch()
    torch.testing.assert_close(module.batch_loss(batch), _full_logits_loss(module, batch))


def test_example_losses_are_per_example_means():
    module, batch = _module(), _batch()
    per_example = module.example_losses(batch)
    for i in range(2):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        torch.testing.assert_close(per_example[i], _full_logits_loss(module, row))


def test_low_precision_forward_keeps_float32_master_weights():
    module, batch = _module(), _batch()
    module.hparams.forward_dtype = "bfloat16"
    loss = module.batch_loss(batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in module.net.parameters())
    assert not torch.equal(loss, _full_logits_loss(module, batch))  # bf16 matmuls really ran
