"""Datasets from the Hugging Face Hub, used when no local data root is given."""

from __future__ import annotations

from kit.errors import UsageError, first_line
from kit.paths import DATA_ROOT_ENV


def load_hub_dataset(hub_id: str, local_copy: str, **kwargs):
    """`datasets.load_dataset(hub_id, **kwargs)`; without Hub access, a one-line UsageError naming the
    local-copy fix (`local_copy`: what the data root must hold) instead of datasets' ConnectionError."""
    import datasets

    try:
        return datasets.load_dataset(hub_id, **kwargs)
    except OSError as e:  # ConnectionError (no network), DatasetNotFoundError (offline mode), ...
        raise UsageError(
            f"no data root is set and {hub_id} cannot be loaded from the Hugging Face Hub ({first_line(e)}); "
            f"pass --data.data_root DIR or set ${DATA_ROOT_ENV} to a folder holding {local_copy}"
        ) from None
