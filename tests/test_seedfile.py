"""Fine-tunes as seed files: the format (round trip, refusal of truncated or corrupted files) and
`fedkseed export` + `fedkseed materialize` of a real run back to its exact weights."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from kit.cli import main
from kit.federation.seedfile import MAGIC, SeedFile, SeedFileError, decode, encode
from kit.identity import weights_digest

from .conftest import fed_args


def _seedfile(rounds: int = 3, k: int = 16) -> SeedFile:
    rng = np.random.default_rng(0)
    downlinks = []
    for _ in range(rounds):
        g = np.zeros(k, dtype=np.float32)
        touched = rng.choice(k, 5, replace=False)
        g[touched] = rng.standard_normal(5).astype(np.float32)
        downlinks.append(g)
    downlinks.append(np.zeros(k, dtype=np.float32))  # a round with no step kept (all skipped)
    z = {"family": "philox", "version": "2", "chunk_size": 1 << 20, "distribution": "gaussian"}
    return SeedFile("m", "a" * 64, z, k, 42, 3e-7, 0.0, "fedkseed", "b" * 64, downlinks)


def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_round_trip_keeps_every_scalar_and_field():
    sf = _seedfile()
    data = encode(sf)
    back = decode(data)
    assert back.header() == sf.header() and back.lr == 3e-7
    for a, b in zip(back.downlinks, sf.downlinks, strict=True):
        assert a.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    header_len = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    assert len(data) == len(MAGIC) + 6 + header_len + 3 * (4 + 8 * 5) + 4 + 32  # touched seeds only


def test_truncated_corrupted_or_foreign_files_are_refused():
    data = encode(_seedfile())
    with pytest.raises(SeedFileError, match="truncated or corrupted"):
        decode(data[:-7], "x.seeds")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(SeedFileError, match="x.seeds is truncated or corrupted"):
        decode(bytes(flipped), "x.seeds")
    with pytest.raises(SeedFileError, match="not a fedkseed seed file"):
        decode(b"PK\x03\x04" + data[4:], "x.seeds")
    with pytest.raises(SeedFileError, match="format 9"):
        decode(_reseal(data[:8] + struct.pack("<H", 9) + data[10:-32]), "x.seeds")
    with pytest.raises(SeedFileError, match="ends in round 4 of 4"):  # checksum fine, rounds cut off
        decode(_reseal(data[: -32 - 4]), "x.seeds")


def test_invalid_rounds_are_refused_even_with_a_valid_checksum():
    body = bytearray(encode(_seedfile(rounds=1))[:-32])
    header_len = struct.unpack_from("<I", body, len(MAGIC) + 2)[0]
    first = len(MAGIC) + 6 + header_len + 4  # the first round's indices
    idx = np.frombuffer(bytes(body[first : first + 20]), "<u4").copy()
    body[first : first + 20] = idx[::-1].astype("<u4").tobytes()
    with pytest.raises(SeedFileError, match="not ascending"):
        decode(_reseal(bytes(body)))
    body[first : first + 20] = idx.astype("<u4").tobytes()
    body[first + 20 : first + 24] = np.float32(np.nan).tobytes()
    with pytest.raises(SeedFileError, match="non-finite"):
        decode(_reseal(bytes(body)))


def test_export_and_materialize_give_the_runs_exact_weights(tiny_model_dir, data_root, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    main([*fed_args(tiny_model_dir, data_root, run, rounds=2), "--fed.rouge_at_end", "false"])
    summary = json.loads((run / "summary.json").read_text())
    seeds = tmp_path / "run.seeds"
    main(["export", "--run", str(run), "--out", str(seeds)])
    assert seeds.stat().st_size < 2048 and f"{seeds.stat().st_size:,} bytes" in capsys.readouterr().out
    sf = decode(seeds.read_bytes())
    assert sf.model == str(tiny_model_dir) and sf.z == summary["z"] and len(sf.downlinks) == 2
    out = tmp_path / "materialized"
    main(["materialize", str(seeds), "--out", str(out)])
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert weights_digest(loaded) == summary["global_weights_sha256"]
    assert (out / "tokenizer.json").is_file()
    # the replay is checked: a seed file whose scalars were changed (and resealed) is refused
    body = bytearray(seeds.read_bytes()[:-32])
    body[-1] ^= 0x01  # the last scalar's top byte: another value, still finite and non-zero
    with pytest.raises(RuntimeError, match="have sha256"):
        main(["materialize", _write(tmp_path, body), "--out", str(tmp_path / "x")])


def _write(tmp_path, body: bytes) -> str:
    path = tmp_path / "edited.seeds"
    path.write_bytes(_reseal(bytes(body)))
    return str(path)


def test_export_refuses_a_baseline_run(tiny_model_dir, data_root, tmp_path):
    run = tmp_path / "run"
    main(
        [
            *fed_args(tiny_model_dir, data_root, run, rounds=1),
            "--fed.rouge_at_end",
            "false",
            "--method",
            "fedavg",
        ]
    )
    with pytest.raises(ValueError, match="'fedavg' run; only fedkseed and fedkseed-pro"):
        main(["export", "--run", str(run), "--out", str(tmp_path / "x.seeds")])
