"""Fuzzing the adapter weights files: every corrupt `.bin` or `.safetensors` gives an AdapterError naming the file.

Real files saved by the engine from a tiny model are damaged at random (seeded): truncations, byte flips,
insertions and deletions, for `.safetensors` edits of the header length and of the header JSON (dtypes, shapes,
offsets, keys), for `.bin` edits inside the zip (the pickle `data.pkl` with its CRC fixed so the unpickler reads
it, entry names, sizes). Each is loaded with `load_adapter` into one model; a load either succeeds (a flip inside
tensor data can leave a valid file) or raises an AdapterError that names the file, and after a failure the model's
adapters and weights are exactly as before.
"""

import hashlib
import json
import random
import struct
import zipfile
import zlib
from collections import Counter
from io import BytesIO

import pytest
import torch
from tiny import tiny_adapter_model

from workbench import AdapterError
from workbench.core import files

CASES_PER_FORMAT = 300
SAFE_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "X", "", 7, None]


def digest(model) -> str:
    sha = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        sha.update(key.encode())
        sha.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return sha.hexdigest()


# --- generic byte damage ---------------------------------------------------------------------------------


def truncate(rng, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def flip(rng, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite(rng, data: bytes) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    out[start : start + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
    return bytes(out)


def insert(rng, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 32)) + data[at:]


def delete(rng, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64) :]


def garbage(rng, data: bytes) -> bytes:
    return rng.choice([b"", b"PK\x03\x04", rng.randbytes(rng.randint(1, 256)), data[:8] + b"{}"])


BYTE_DAMAGE = [truncate, flip, overwrite, insert, delete, garbage]


# --- safetensors: header length and header JSON -----------------------------------------------------------


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header, body: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def header_length(rng, data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    value = rng.choice([0, 1, length - 1, length + 1, length + 8, len(data), len(data) + 1, 2**63, 2**64 - 1])
    return struct.pack("<Q", max(0, min(value, 2**64 - 1))) + data[8:]


def header_json(rng, data: bytes) -> bytes:
    header, body = split_safetensors(data)
    keys = [k for k in header if k != "__metadata__"]
    key = rng.choice(keys)
    entry = header[key]
    edit = rng.randrange(10)
    if edit == 0:
        entry["dtype"] = rng.choice(SAFE_DTYPES)
    elif edit == 1:
        entry["shape"] = rng.choice([[], [0], [-1], [2**40, 2**40], [1] * 9, ["3"], None, entry["shape"][::-1]])
    elif edit == 2:
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[end, start], [start, end + 4], [start, len(body) + 4], [-4, end], [start], None, [0, 2**62]]
        )
    elif edit == 3:
        del header[key]
    elif edit == 4:
        header[key] = rng.choice([None, [], "x", 1, {}])
    elif edit == 5:
        header["__metadata__"] = rng.choice([None, [], {"format": 1}, {"format": None}, "pt"])
    elif edit == 6:
        header[key + rng.choice(["x", ".extra", "\u00e9", ""]) or "x"] = dict(entry)
    elif edit == 7:
        header = rng.choice([[], "x", None, 1, {}])
    elif edit == 8:
        return join_safetensors(json.dumps(header).encode()[: rng.randrange(40)] + b"\xff\xfe", body)
    else:
        header[rng.choice(["", "a" * 1000, "\x00", "../x"])] = dict(entry)
    return join_safetensors(header, body)


SAFETENSORS_DAMAGE = BYTE_DAMAGE + [header_length, header_json, header_json]


# --- .bin: damage inside the zip --------------------------------------------------------------------------


def _entry_payload(data: bytes, suffix: str) -> tuple[zipfile.ZipInfo, int]:
    """The zip entry whose name ends in `suffix` and the offset of its (stored) payload in `data`."""
    with zipfile.ZipFile(BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info, info.header_offset + 30 + name_length + extra_length


def _set_crc(data: bytearray, info: zipfile.ZipInfo, crc: int) -> None:
    """Patch the entry's CRC in its local header and in the central directory, so the reader trusts the payload."""
    data[info.header_offset + 14 : info.header_offset + 18] = struct.pack("<I", crc)
    start = 0
    while True:  # the central-directory record whose local-header offset is this entry's
        central = bytes(data).find(b"PK\x01\x02", start)
        if central < 0:
            return
        if struct.unpack("<I", data[central + 42 : central + 46])[0] == info.header_offset:
            data[central + 16 : central + 20] = struct.pack("<I", crc)
            return
        start = central + 4


def pickle_damage(rng, data: bytes) -> bytes:
    """Damage `data.pkl` in place (same length, CRC fixed): what reaches the weights-only unpickler."""
    info, offset = _entry_payload(data, "data.pkl")
    out = bytearray(data)
    payload = bytearray(out[offset : offset + info.compress_size])
    for _ in range(rng.choice([1, 1, 2, 3, 8])):
        at = rng.randrange(len(payload))
        if rng.random() < 0.5:
            payload[at] ^= 1 << rng.randrange(8)
        else:
            payload[at] = rng.randrange(256)
    out[offset : offset + info.compress_size] = payload
    _set_crc(out, info, zlib.crc32(payload))
    return bytes(out)


def entry_damage(rng, data: bytes) -> bytes:
    """Damage zip metadata: an entry's name, its sizes, or drop a tensor's storage from the archive."""
    with zipfile.ZipFile(BytesIO(data)) as archive:
        infos = archive.infolist()
        contents = {i.filename: archive.read(i) for i in infos}
    edit = rng.randrange(3)
    if edit == 0:  # rewrite the archive without one entry (or with one renamed)
        victim = rng.choice(infos).filename
        buffer = BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, content in contents.items():
                if name != victim:
                    archive.writestr(name, content)
                elif rng.random() < 0.5:
                    archive.writestr(name + "x", content)
        return buffer.getvalue()
    info = rng.choice(infos)
    out = bytearray(data)
    if edit == 1:  # the local header's sizes
        field = info.header_offset + rng.choice([18, 22])
        out[field : field + 4] = struct.pack("<I", rng.choice([0, 1, info.compress_size + 1, 2**32 - 1]))
    else:  # a byte of the name in the local header
        at = info.header_offset + 30 + rng.randrange(len(info.filename))
        out[at] = rng.randrange(256)
    return bytes(out)


BIN_DAMAGE = BYTE_DAMAGE + [pickle_damage, pickle_damage, pickle_damage, entry_damage]


# --- the test ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An adapter saved by the engine in both formats: {suffix: (folder, weights path, original bytes)}."""
    source = tiny_adapter_model()
    source.add_adapter("a", config="seq_bn[reduction_factor=8]")
    out = {}
    for suffix, safe in ((".bin", False), (".safetensors", True)):
        folder = tmp_path_factory.mktemp("fuzz") / "a"
        source.save_adapter(folder, "a", with_head=False, use_safetensors=safe)
        path = folder / (files.SAFE_WEIGHTS_NAME if safe else files.WEIGHTS_NAME)
        out[suffix] = (folder, path, path.read_bytes())
    return out


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_corrupt_weights_files_give_adapter_errors(saved, suffix):
    folder, path, original = saved[suffix]
    damages = BIN_DAMAGE if suffix == ".bin" else SAFETENSORS_DAMAGE
    rng = random.Random(f"issue-14-{suffix}")
    model = tiny_adapter_model()
    model.add_adapter("keep", config="seq_bn[reduction_factor=8]")
    before = (list(model.adapters), digest(model))
    assert model.load_adapter(str(folder), load_as="fz") == "fz"  # the undamaged file loads
    model.delete_adapter("fz")
    outcomes = Counter()
    for case in range(CASES_PER_FORMAT):
        damage = damages[case % len(damages)]
        data = damage(rng, original)
        if data == original:
            continue
        path.write_bytes(data)
        try:
            model.load_adapter(str(folder), load_as="fz")
        except AdapterError as err:
            assert str(path) in str(err), f"case {case} ({damage.__name__}): {err}"
            outcomes[damage.__name__, "refused"] += 1
        except Exception as err:  # noqa: BLE001 - the point of the test: nothing else may escape
            pytest.fail(f"case {case} ({damage.__name__}) escaped as {type(err).__name__}: {err}")
        else:
            outcomes[damage.__name__, "loaded"] += 1
            model.delete_adapter("fz")
        assert (list(model.adapters), digest(model)) == before, f"case {case} ({damage.__name__}) changed the model"
    path.write_bytes(original)
    refused = sum(n for (_, result), n in outcomes.items() if result == "refused")
    assert sum(outcomes.values()) >= CASES_PER_FORMAT - 10
    assert refused >= CASES_PER_FORMAT // 2, outcomes  # most damage is caught, not silently loaded
