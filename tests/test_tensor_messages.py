import struct
import warnings
import zlib

import pytest
import torch

from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK, MessageError
from kit.federation.tensors import TensorMessage, decode_tensors, encode_tensors, payload_size

# Written out from the module docstring's layout, not taken from the module.
HEADER = 4 + 1 + 1 + 1 + 1 + 4 + 4 + 4 + 4  # magic, 4 u8 fields, 4 u32 fields
CRC = 4
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    # Deliberately not in alphabetical order: the message keeps the caller's order.
    return {
        "lora.B": torch.randn(3, 5, 7, generator=g),
        "scale": torch.randn((), generator=g),
        "bias": torch.randn(1, generator=g),
        "lora.A": torch.randn(4, 6, generator=g),
    }


def _spec(tensors):
    return [(k, tuple(t.shape)) for k, t in tensors.items()]


def _reseal(data) -> bytes:
    body = bytes(data[:-CRC])
    return body + struct.pack("<I", zlib.crc32(body))


def _values_offset(spec) -> int:
    return HEADER + sum(2 + len(k.encode()) + 1 + 4 * len(shape) for k, shape in spec)


def _uplink(tensors=None, wire="float32", rnd=3, client=7):
    tensors = _tensors() if tensors is None else tensors
    return encode_tensors(UPLINK, rnd, client, tensors, wire)


def test_round_trip_is_exact_in_float32():
    tensors = _tensors()
    data = _uplink(tensors)
    msg = decode_tensors(data, UPLINK, _spec(tensors), "float32", expected_round=3, expected_client=7)
    assert isinstance(msg, TensorMessage) and (msg.round, msg.client_id) == (3, 7)
    assert list(msg.tensors) == ["lora.B", "scale", "bias", "lora.A"]
    for key, t in tensors.items():
        got = msg.tensors[key]
        assert got.dtype == torch.float32 and got.device.type == "cpu" and torch.equal(got, t)
    assert msg.tensors["scale"].shape == () and msg.tensors["lora.B"].shape == (3, 5, 7)


@pytest.mark.parametrize("wire", ["float16", "bfloat16"])
def test_half_precision_round_trip_equals_torchs_own_cast(wire):
    tensors = _tensors(seed=1)
    msg = decode_tensors(_uplink(tensors, wire), UPLINK, _spec(tensors), wire)
    for key, t in tensors.items():
        assert torch.equal(msg.tensors[key], t.to(TORCH_DTYPE[wire]).float())
        assert msg.tensors[key].dtype == torch.float32


def test_inputs_of_any_float_dtype_and_layout_are_cast_to_the_wire_dtype():
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(5, 3, generator=g, dtype=torch.float64)
    tensors = {
        "f64": wide,
        "bf16": torch.randn(4, generator=g).to(torch.bfloat16),
        "transposed": wide.t(),  # not contiguous
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),  # requires grad
    }
    msg = decode_tensors(_uplink(tensors, "float16"), UPLINK, _spec(tensors), "float16")
    for key, t in tensors.items():
        assert torch.equal(msg.tensors[key], t.detach().to(torch.float16).float()), key


def test_empty_tensors_round_trip():
    tensors = {"empty": torch.zeros(0, 3), "x": torch.ones(2)}
    msg = decode_tensors(_uplink(tensors), UPLINK, _spec(tensors), "float32")
    assert msg.tensors["empty"].shape == (0, 3) and torch.equal(msg.tensors["x"], torch.ones(2))


def test_downlinks_carry_no_client():
    tensors = _tensors()
    data = encode_tensors(DOWNLINK, 4, NO_CLIENT, tensors, "bfloat16")
    msg = decode_tensors(data, DOWNLINK, _spec(tensors), "bfloat16", expected_round=4)
    assert msg.client_id == NO_CLIENT and msg.round == 4
    with pytest.raises(MessageError, match="NO_CLIENT"):
        encode_tensors(DOWNLINK, 4, 0, tensors, "float32")
    with pytest.raises(MessageError, match="NO_CLIENT"):
        encode_tensors(UPLINK, 4, NO_CLIENT, tensors, "float32")


@pytest.mark.parametrize("wire", ["float32", "float16", "bfloat16"])
def test_encoded_length_equals_payload_size_and_the_layout(wire):
    tensors = {**_tensors(), "naïve": torch.ones(2, 2)}  # a non-ascii name: its utf-8 length counts
    spec = _spec(tensors)
    expected = HEADER + CRC
    expected += 2 + len("lora.B") + 1 + 4 * 3 + 3 * 5 * 7 * ITEMSIZE[wire]
    expected += 2 + len("scale") + 1 + 0 + 1 * ITEMSIZE[wire]
    expected += 2 + len("bias") + 1 + 4 * 1 + 1 * ITEMSIZE[wire]
    expected += 2 + len("lora.A") + 1 + 4 * 2 + 4 * 6 * ITEMSIZE[wire]
    expected += 2 + 6 + 1 + 4 * 2 + 2 * 2 * ITEMSIZE[wire]  # "naïve" is 6 bytes in utf-8
    assert HEADER == 24
    assert len(_uplink(tensors, wire)) == payload_size(spec, wire) == expected


def test_header_fields_sit_where_the_layout_says():
    data = _uplink(wire="bfloat16", rnd=0x01020304, client=9)
    magic, version, kind, code, reserved, rnd, client, count, table = struct.unpack_from("<4sBBBBIIII", data)
    spec = _spec(_tensors())
    assert (magic, version, kind, code, reserved) == (b"FKTN", 1, UPLINK, 2, 0)
    assert (rnd, client, count, table) == (0x01020304, 9, 4, _values_offset(spec) - HEADER)
    assert struct.unpack_from("<I", data, len(data) - CRC)[0] == zlib.crc32(data[:-CRC])


def test_decoded_tensors_own_their_memory_and_decoding_emits_no_warning():
    tensors = _tensors()
    data = bytearray(_uplink(tensors))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msg = decode_tensors(data, UPLINK, _spec(tensors), "float32")
    data[_values_offset(_spec(tensors)) :] = bytes(len(data) - _values_offset(_spec(tensors)))
    assert torch.equal(msg.tensors["lora.B"], tensors["lora.B"])  # zeroing the buffer changed nothing
    msg.tensors["bias"].add_(1)  # writable


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[:10], "truncated: 10 bytes"),
        (lambda d: d[:-7], "truncated: .* bytes, the spec's message is"),
        (lambda d: d[: -CRC - 3] + bytes([d[-CRC - 3] ^ 0x01]) + d[-CRC - 2 :], "checksum mismatch"),
        (lambda d: _reseal(b"XXXX" + d[4:]), "magic b'XXXX'"),
        (lambda d: _reseal(d[:4] + bytes([9]) + d[5:]), "version 9, this kit reads version 1"),
        (lambda d: _reseal(d[:6] + bytes([1]) + d[7:]), "wire dtype float16, expected float32"),
        (lambda d: _reseal(d[:6] + bytes([77]) + d[7:]), "wire dtype code 77, expected float32"),
        (lambda d: _reseal(d[:7] + bytes([5]) + d[8:]), "reserved header byte is 5"),
        (lambda d: _reseal(d[:20] + struct.pack("<I", 10**6) + d[24:]), "table length 1000000 exceeds"),
        (lambda d: _reseal(d[:20] + struct.pack("<I", 3) + d[24:]), "table is truncated"),
        (lambda d: _reseal(d[:16] + struct.pack("<I", 3) + d[20:]), "table is .* bytes, its 3 entries take"),
    ],
)
def test_malformed_messages_are_rejected(mutate, match):
    data = _uplink()
    with pytest.raises(MessageError, match=match):
        decode_tensors(mutate(data), UPLINK, _spec(_tensors()), "float32")


def test_uplink_decoded_as_downlink_is_rejected():
    with pytest.raises(MessageError, match="expected a tensor downlink, got message kind 1"):
        decode_tensors(_uplink(), DOWNLINK, _spec(_tensors()), "float32")


def test_wire_dtype_other_than_expected_is_rejected():
    with pytest.raises(MessageError, match="wire dtype bfloat16, expected float16"):
        decode_tensors(_uplink(wire="bfloat16"), UPLINK, _spec(_tensors()), "float16")


def test_wrong_round_or_client_is_rejected():
    data, spec = _uplink(rnd=2, client=5), _spec(_tensors())
    with pytest.raises(MessageError, match="round 2, expected round 3"):
        decode_tensors(data, UPLINK, spec, "float32", expected_round=3)
    with pytest.raises(MessageError, match="from client 5, expected client 6"):
        decode_tensors(data, UPLINK, spec, "float32", expected_client=6)
    with pytest.raises(MessageError, match="names client 5"):
        decode_tensors(_reseal(data[:5] + bytes([DOWNLINK]) + data[6:]), DOWNLINK, spec, "float32")


def test_names_order_and_shapes_must_match_the_spec():
    data, spec = _uplink(), _spec(_tensors())
    with pytest.raises(MessageError, match="lacks tensor 'gate'"):
        decode_tensors(data, UPLINK, [*spec, ("gate", (2,))], "float32")
    with pytest.raises(MessageError, match="unexpected tensor 'lora.A'"):
        decode_tensors(data, UPLINK, spec[:-1], "float32")
    with pytest.raises(MessageError, match="order differs.*'scale' at position 1, expected 'bias'"):
        decode_tensors(data, UPLINK, [spec[0], spec[2], spec[1], spec[3]], "float32")
    wrong = [*spec[:3], ("lora.A", (6, 4))]
    with pytest.raises(MessageError, match=r"'lora.A' has shape \(4, 6\), the spec expects \(6, 4\)"):
        decode_tensors(data, UPLINK, wrong, "float32")


def test_data_length_other_than_the_table_announces_is_rejected():
    tensors = {"x": torch.ones(4)}
    data = _uplink(tensors)
    with pytest.raises(MessageError, match="data is 14 bytes, its table announces 16"):
        decode_tensors(_reseal(data[: -CRC - 2] + data[-CRC:]), UPLINK, _spec(tensors), "float32")
    with pytest.raises(MessageError, match="data is 20 bytes, its table announces 16"):
        decode_tensors(_reseal(data[:-CRC] + bytes(4) + data[-CRC:]), UPLINK, _spec(tensors), "float32")


@pytest.mark.parametrize(
    ("wire", "bad"),
    [("float32", struct.pack("<f", float("nan"))), ("float16", struct.pack("<e", float("inf")))],
)
def test_nan_or_inf_behind_a_valid_checksum_is_rejected(wire, bad):
    tensors = _tensors()
    spec = _spec(tensors)
    data = bytearray(_uplink(tensors, wire))
    # the second value of the first tensor ("lora.B")
    at = _values_offset(spec) + ITEMSIZE[wire]
    data[at : at + ITEMSIZE[wire]] = bad
    with pytest.raises(MessageError, match="'lora.B' holds NaN or infinite"):
        decode_tensors(_reseal(data), UPLINK, spec, wire)


def test_non_finite_values_are_refused_at_encode():
    with pytest.raises(MessageError, match="tensor 'w': it holds NaN or infinite"):
        _uplink({"ok": torch.ones(2), "w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(MessageError, match="'big': its values overflow float16"):
        _uplink({"big": torch.tensor([1.0, 1e5])}, "float16")
    _uplink({"big": torch.tensor([1.0, 1e5])}, "bfloat16")  # fits bfloat16's range


def test_non_float_tensors_and_unknown_wire_dtypes_are_refused():
    with pytest.raises(MessageError, match="'ids' has dtype torch.int64"):
        _uplink({"ids": torch.arange(3)})
    with pytest.raises(ValueError, match="unknown wire dtype 'float8'"):
        _uplink(wire="float8")
    with pytest.raises(ValueError, match="unknown wire dtype"):
        payload_size([("x", (2,))], "int8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_encode_like_their_cpu_copies():
    tensors = _tensors()
    on_gpu = {k: t.cuda() for k, t in tensors.items()}
    assert _uplink(on_gpu, "bfloat16") == _uplink(tensors, "bfloat16")
