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


def test_export_refuses_a_baseline_run(tiny_model_dir, data_root, tmp_path, capsys):
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
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # a fixable problem: one line, exit status 2
        main(["export", "--run", str(run), "--out", str(tmp_path / "x.seeds")])
    assert exit_.value.code == 2
    assert "'fedavg' run; only fedkseed and fedkseed-pro" in capsys.readouterr().err.strip().splitlines()[-1]


def _with_header(header: dict | str, rounds_of: SeedFile | None = None) -> bytes:
    """A resealed seed file (valid sha256) whose header is `header` (a dict, or raw JSON text)."""
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    data = encode(rounds_of or _seedfile())
    old_len = struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    rest = data[len(MAGIC) + 6 + old_len : -32]
    return _reseal(MAGIC + struct.pack("<HI", 1, len(raw)) + raw + rest)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_seeds", "sixty-four"),
        ("num_seeds", None),
        ("num_seeds", -1),
        ("num_seeds", True),
        ("lr", float("nan")),
        ("lr", "fast"),
        ("lr", 0.0),
        ("weight_decay", -0.1),
        ("z", [1, 2]),
        ("method", "fedavg"),
        ("theta0_sha256", "abc"),
        ("federation_seed", 2.5),
        ("rounds", -2),
        ("model", ""),
    ],
)
def test_crafted_header_fields_are_refused_naming_the_field(field, value):
    header = {**_seedfile().header(), field: value}
    with pytest.raises(SeedFileError, match=rf"x\.seeds: header field {field} must"):
        decode(_with_header(header), "x.seeds")


def test_a_deep_huge_or_non_object_header_is_refused_without_crashing():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SeedFileError, match="bytes, at most"):
        decode(_with_header(deep), "x.seeds")
    nested = json.dumps({**_seedfile().header(), "z": {"family": [[[[1]]]]}})
    with pytest.raises(SeedFileError, match="nests deeper"):
        decode(_with_header(nested), "x.seeds")
    with pytest.raises(SeedFileError, match="must be a JSON object"):
        decode(_with_header("[1, 2]"), "x.seeds")
    missing = {k: v for k, v in _seedfile().header().items() if k != "lr"}
    with pytest.raises(SeedFileError, match="header field lr is missing"):
        decode(_with_header(missing), "x.seeds")
    with pytest.raises(SeedFileError, match="z chunk_size must be an integer"):
        decode(_with_header({**_seedfile().header(), "z": {**_seedfile().z, "chunk_size": "big"}}), "x.seeds")
    with pytest.raises(SeedFileError, match="rounds .* exceeds"):
        decode(_with_header({**_seedfile().header(), "rounds": 1_000_000}), "x.seeds")


def test_known_optional_and_unknown_plain_fields_are_accepted():
    header = {**_seedfile().header(), "master_dtype": "bfloat16", "comment": "from a newer kit"}
    assert decode(_with_header(header)).header() == {**_seedfile().header(), "master_dtype": "bfloat16"}
    with pytest.raises(SeedFileError, match="header field master_dtype must be one of"):
        decode(_with_header({**header, "master_dtype": "int8"}))
    with pytest.raises(SeedFileError, match="unknown header field comment"):
        decode(_with_header({**header, "comment": {"a": 1}}))


def test_json_depth_ignores_brackets_inside_strings():
    from kit.federation.seedfile_header import json_depth

    assert json_depth('{"a": "[[[{{{", "b": [1, {"c": "\\"]"}]}') == 3
    assert json_depth("1") == 0
