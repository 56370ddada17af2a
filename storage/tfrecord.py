"""``--output-format tfrecord`` without TensorFlow: ``NNNNN.tfrecord`` of ``tf.train.Example`` records.

The record framing (length, masked CRC32C of the length, data, masked CRC32C of the data) and the
few protobuf messages involved (Example > Features > map<string, Feature> > Bytes/Float/Int64List)
are written by hand: pulling TensorFlow or generated protobuf code in for five messages would be
the heaviest dependency of the project. Feature names follow img2dataset's tfrecord writer: ``key``,
the image under its extension (``jpg``, ``png``…), ``txt``, then every field of the sample's JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

from storage.atomic import TMP_SUFFIX, commit_tmp

_MASK_DELTA = 0xA282EAD8


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def _crc32c_py(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_impl() -> Any:
    # The C implementation is ~1000x faster on megabyte images; the table version keeps the format
    # usable (and testable against it) where the extension is not installed.
    try:
        import crc32c as _c

        return _c.crc32c
    except ImportError:
        return _crc32c_py


crc32c = _crc32c_impl()


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C (rotate right by 15, add a constant)."""
    crc = int(crc32c(data)) & 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: little-endian uint64 length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record))


# -- protobuf wire format (only what tf.train.Example needs) ----------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(value: Any) -> bytes | None:
    """A ``tf.train.Feature`` for one value; None for values with no natural feature (None, dicts)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return _field(3, _field(1, _varint(value)))  # Int64List, packed
    if isinstance(value, float):
        return _field(2, _field(1, struct.pack("<f", value)))  # FloatList, packed
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return _field(1, _field(1, bytes(value)))  # BytesList
    if isinstance(value, list | tuple) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return _field(3, _field(1, b"".join(_varint(v) for v in value)))
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return _field(2, _field(1, b"".join(struct.pack("<f", float(v)) for v in value)))
        if all(isinstance(v, str | bytes) for v in value):
            items = (v.encode("utf-8") if isinstance(v, str) else v for v in value)
            return _field(1, b"".join(_field(1, v) for v in items))
    if value is None:
        return None
    return _feature(json.dumps(value, ensure_ascii=False, default=str))


def encode_example(features: dict[str, Any]) -> bytes:
    """A serialized ``tf.train.Example`` of ``features`` (name -> int, float, str, bytes or a list of them)."""
    entries = b""
    for name, value in features.items():
        feat = _feature(value)
        if feat is None:
            continue
        entries += _field(1, _field(1, name.encode("utf-8")) + _field(2, feat))
    return _field(1, entries)


class TFRecordSink:
    """``NNNNN.tfrecord``: one Example per saved sample, appended as samples finish, renamed into place.

    Not resumable: a stopped tar's records are dropped and the tar is redone.
    """

    resumable = False
    offset = 0

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = path + TMP_SUFFIX
        self._fh = open(self.tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - owned by this object
        self.bytes_written = 0
        self.samples = 0

    @property
    def outputs(self) -> list[str]:
        return [self.path]

    def add_sample(self, key: str, members: dict[str, bytes], res: Any = None) -> None:
        """Append the sample as one record: key, image under its extension, caption, JSON fields."""
        features: dict[str, Any] = {"key": key}
        meta: dict[str, Any] = {}
        for ext, data in members.items():
            if ext == "json":
                with contextlib.suppress(ValueError):
                    meta = json.loads(data)
            elif ext != "txt":
                features[ext] = data
        features["txt"] = members.get("txt", b"")
        for name, value in meta.items() if isinstance(meta, dict) else ():
            features.setdefault(name, value)
        record = frame(encode_example(features))
        self._fh.write(record)
        self.bytes_written += len(record)
        self.samples += 1

    def sync(self) -> None:
        """Nothing is kept across runs, so nothing to make durable before commit."""

    def close(self) -> None:
        """Stopping drops the partial file (the tar is redone)."""
        self.abort()

    def commit(self) -> None:
        self._fh.close()
        commit_tmp(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


# -- reading back (--retry-failed carries finished samples over) --------------------------------------


def iter_records(path: str) -> Iterator[bytes]:
    """The payloads of a TFRecord file, every length and data checksum verified."""
    with open(path, "rb") as fh:
        while head := fh.read(12):
            if len(head) != 12 or struct.unpack("<I", head[8:])[0] != masked_crc(head[:8]):
                raise ValueError(f"{path}: corrupt record header at byte {fh.tell() - len(head)}")
            (length,) = struct.unpack("<Q", head[:8])
            data = fh.read(length)
            tail = fh.read(4)
            if len(data) != length or len(tail) != 4 or struct.unpack("<I", tail)[0] != masked_crc(data):
                raise ValueError(f"{path}: corrupt record ending at byte {fh.tell()}")
            yield data


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, payload) of the length-delimited fields of a message (all that Example uses)."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        if tag & 7 != 2:
            raise ValueError(f"unexpected protobuf wire type {tag & 7}")
        size, pos = _read_varint(buf, pos)
        yield tag >> 3, buf[pos : pos + size]
        pos += size


def _feature_value(buf: bytes) -> Any:
    for kind, payload in _fields(buf):
        if kind == 1:  # BytesList
            values: list[Any] = [v for _, v in _fields(payload)]
        elif kind == 2:  # FloatList (packed)
            packed = b"".join(v for _, v in _fields(payload))
            values = list(struct.unpack(f"<{len(packed) // 4}f", packed))
        else:  # Int64List (packed)
            packed = b"".join(v for _, v in _fields(payload))
            values, pos = [], 0
            while pos < len(packed):
                n, pos = _read_varint(packed, pos)
                values.append(n - (1 << 64) if n >= 1 << 63 else n)
        return values[0] if len(values) == 1 else values
    return None


def decode_example(record: bytes) -> dict[str, Any]:
    """The features of a serialized ``tf.train.Example`` as written by :func:`encode_example`."""
    out: dict[str, Any] = {}
    for _, features in _fields(record):
        for _, entry in _fields(features):
            parts = dict(_fields(entry))
            out[parts[1].decode("utf-8")] = _feature_value(parts.get(2, b""))
    return out


def read_samples(path: str) -> dict[str, dict[str, bytes]]:
    """Every sample of a tfrecord file as members (image, ``txt``, ``json``), keyed by sample key.

    Records are laid out as TFRecordSink writes them (key, image under its extension, txt, the JSON
    fields), so writing the members again gives the same records byte for byte.
    """
    samples: dict[str, dict[str, bytes]] = {}
    for record in iter_records(path):
        (_, key), (ext, image), *rest = decode_example(record).items()
        meta = {name: _text(value) for name, value in rest if name != "txt"}
        samples[key.decode("utf-8")] = {
            ext: image,
            "txt": dict(rest).get("txt", b""),
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        }
    return samples


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value
