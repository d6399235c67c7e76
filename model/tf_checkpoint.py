"""A reader of TensorFlow checkpoints (the Saver "V2" format), without TensorFlow.

A checkpoint is a prefix `P` with
  * `P.index`: an SSTable (TensorFlow's LevelDB-derived table format: prefix-compressed blocks,
    each followed by a compression byte and a masked crc32c, and a 48-byte footer ending in a
    magic number) mapping every tensor name to a serialized `BundleEntryProto` (dtype, shape, shard,
    offset, size, masked crc32c of the bytes); the empty key holds a `BundleHeaderProto` (number of
    shards, endianness);
  * `P.data-SSSSS-of-NNNNN`: the shards, the raw little-endian tensor bytes at those offsets.
The protobuf messages are decoded here from their wire format (the few fields needed), and every
block and every tensor that is read is checked against its crc32c (`google-crc32c`, a C
implementation). Optional companions (`P.meta`, the folder's `checkpoint` file) are not needed.

`open_checkpoint(path)` accepts the prefix, one of its files, or a folder holding one checkpoint;
every failure is a `TFCheckpointError` whose message names the file.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c (4 bytes)
# TensorFlow's DataType enum -> little-endian numpy dtype (the types a Saver writes for variables).
DTYPES: dict[int, str] = {
    1: "<f4",  # DT_FLOAT
    2: "<f8",  # DT_DOUBLE
    3: "<i4",  # DT_INT32
    4: "u1",  # DT_UINT8
    5: "<i2",  # DT_INT16
    6: "i1",  # DT_INT8
    9: "<i8",  # DT_INT64
    10: "?",  # DT_BOOL
    17: "<u2",  # DT_UINT16
    19: "<f2",  # DT_HALF
    22: "<u4",  # DT_UINT32
    23: "<u8",  # DT_UINT64
}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32",
               23: "uint64"}  # fmt: skip
_DATA_FILE = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")


class TFCheckpointError(ValueError):
    """The path is not a readable TensorFlow V2 checkpoint, or one of its files is damaged."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: dtype (TensorFlow enum), shape, shard, byte range, masked crc32c."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"dtype {self.dtype}")


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow's masked crc32c (stored so that a crc of data holding crcs differs)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


# ---------------------------------------------------------------------------------------------
# protobuf wire format


class _WireError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field of a serialized message."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _WireError("truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _WireError("truncated length-delimited field")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _WireError("truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if number == 0:
            raise _WireError("field number 0")
        out.append((number, wire, value))
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for number, _, value in _fields(buf):
        if number == 2 and isinstance(value, bytes):  # Dim
            size = 0
            for n2, _, v2 in _fields(value):
                if n2 == 1 and isinstance(v2, int):
                    size = _int64(v2)
            dims.append(size)
        elif number == 3 and value:  # unknown_rank
            raise _WireError("tensor of unknown rank")
    return tuple(dims)


def _entry(name: str, buf: bytes) -> TensorEntry:
    dtype = shard = offset = size = 0
    shape: tuple[int, ...] = ()
    crc: int | None = None
    sliced = False
    for number, _, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            dtype = value
        elif number == 2 and isinstance(value, bytes):
            shape = _shape(value)
        elif number == 3 and isinstance(value, int):
            shard = value
        elif number == 4 and isinstance(value, int):
            offset = _int64(value)
        elif number == 5 and isinstance(value, int):
            size = _int64(value)
        elif number == 6 and isinstance(value, int):
            crc = value
        elif number == 7:
            sliced = True
    return TensorEntry(name, dtype, shape, shard, offset, size, crc, sliced)


# ---------------------------------------------------------------------------------------------
# SSTable


def _block(data: bytes, offset: int, size: int, where: str) -> bytes:
    """The contents of the block at (offset, size), its trailer's crc checked."""
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or size < 4 or end > len(data):
        raise TFCheckpointError(f"{where}: block at {offset} (+{size}) runs past the end of the file")
    contents = data[offset : offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if mask_crc(crc32c(data[offset : offset + size + 1])) != stored:
        raise TFCheckpointError(f"{where}: checksum mismatch in the block at byte {offset} (damaged file)")
    if kind != 0:
        raise TFCheckpointError(f"{where}: compressed table blocks (type {kind}) are not supported")
    return contents


def _block_entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise TFCheckpointError(f"{where}: malformed table block")
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    try:
        while pos < limit:
            shared, pos = _varint(block, pos)
            non_shared, pos = _varint(block, pos)
            value_len, pos = _varint(block, pos)
            if shared > len(key) or pos + non_shared + value_len > limit:
                raise _WireError("entry out of bounds")
            key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            out.append((key, block[pos : pos + value_len]))
            pos += value_len
    except _WireError as exc:
        raise TFCheckpointError(f"{where}: malformed table block ({exc})") from None
    return out


def _handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def read_index(path: Path) -> tuple[dict[str, TensorEntry], int]:
    """The tensor entries of an `.index` file and its number of data shards."""
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TFCheckpointError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise TFCheckpointError(f"{where} is not a TensorFlow checkpoint index (no table footer)")
    footer = data[-FOOTER_SIZE:]
    try:
        _, _, pos = _handle(footer, 0)  # metaindex (empty in checkpoints)
        index_offset, index_size, _ = _handle(footer, pos)
    except _WireError:
        raise TFCheckpointError(f"{where}: malformed table footer") from None
    entries: dict[str, TensorEntry] = {}
    header: bytes | None = None
    for _, handle in _block_entries(_block(data, index_offset, index_size, where), where):
        try:
            offset, size, _ = _handle(handle, 0)
        except _WireError:
            raise TFCheckpointError(f"{where}: malformed block handle") from None
        for key, value in _block_entries(_block(data, offset, size, where), where):
            try:
                if key == b"":
                    header = value
                else:
                    name = key.decode("utf-8")
                    entries[name] = _entry(name, value)
            except (_WireError, UnicodeDecodeError) as exc:
                raise TFCheckpointError(f"{where}: malformed entry {key[:80]!r} ({exc})") from None
    if header is None:
        raise TFCheckpointError(f"{where} has no checkpoint header (not a TensorFlow V2 checkpoint)")
    num_shards, endianness = 1, 0
    try:
        for number, _, field in _fields(header):
            if number == 1 and isinstance(field, int):
                num_shards = field
            elif number == 2 and isinstance(field, int):
                endianness = field
    except _WireError as exc:
        raise TFCheckpointError(f"{where}: malformed checkpoint header ({exc})") from None
    if endianness != 0:
        raise TFCheckpointError(f"{where}: big-endian checkpoints are not supported")
    if num_shards < 1:
        raise TFCheckpointError(f"{where}: header declares {num_shards} data shards")
    return entries, num_shards


# ---------------------------------------------------------------------------------------------
# the checkpoint


def resolve_prefix(path: str | Path) -> Path:
    """The checkpoint prefix named by `path`: the prefix itself, one of its files (`.index`,
    `.meta`, `.data-*`), or a folder holding one checkpoint (the one its `checkpoint` file names
    when there is one)."""
    p = Path(path)
    if p.is_dir():
        return _prefix_in_folder(p)
    text = str(p)
    for suffix in (".index", ".meta"):
        if text.endswith(suffix) and p.is_file():
            return Path(text[: -len(suffix)])
    m = _DATA_FILE.match(text)
    if m and p.is_file():
        return Path(m["prefix"])
    if Path(text + ".index").is_file():
        return p
    if not p.exists() and not p.parent.is_dir():
        raise TFCheckpointError(f"checkpoint not found: {p}")
    if p.is_file():
        raise TFCheckpointError(f"{p} is not a TensorFlow checkpoint (no {p.name}.index next to it)")
    raise TFCheckpointError(f"checkpoint not found: {p} (no {p.name}.index)")


def _prefix_in_folder(folder: Path) -> Path:
    state = folder / "checkpoint"
    if state.is_file():
        m = re.search(
            r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M
        )
        if m:
            named = Path(m[1].encode().decode("unicode_escape"))
            prefix = named if named.is_absolute() else folder / named
            if Path(str(prefix) + ".index").is_file():
                return prefix
            # The file often records the absolute path of the machine that saved it.
            local = folder / named.name
            if Path(str(local) + ".index").is_file():
                return local
    found = sorted(folder.glob("*.index"))
    if len(found) == 1:
        return Path(str(found[0])[: -len(".index")])
    if not found:
        raise TFCheckpointError(f"{folder} holds no TensorFlow checkpoint (no *.index file)")
    names = ", ".join(f.name for f in found[:4])
    raise TFCheckpointError(f"{folder} holds several checkpoints ({names}); name one by its prefix")


class TFCheckpoint:
    """An opened checkpoint: `entries` (name -> TensorEntry) and `read(name)`."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.index_path = Path(str(prefix) + ".index")
        self.entries, self.num_shards = read_index(self.index_path)
        self.data_paths = [
            Path(f"{prefix}.data-{i:05d}-of-{self.num_shards:05d}") for i in range(self.num_shards)
        ]
        used = {e.shard_id for e in self.entries.values() if e.size > 0}
        for shard in sorted(used):
            if shard >= self.num_shards:
                raise TFCheckpointError(
                    f"{self.index_path}: a tensor refers to shard {shard} of {self.num_shards}"
                )
            if not self.data_paths[shard].is_file():
                raise TFCheckpointError(f"data file missing: {self.data_paths[shard]}")

    def files(self) -> list[Path]:
        """The files the tensors are read from: the index and the data shards."""
        return [self.index_path, *(p for p in self.data_paths if p.is_file())]

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a numpy array, its size and crc32c checked."""
        entry = self.entries[name]
        if entry.sliced:
            raise TFCheckpointError(
                f"{self.index_path}: {name} is saved as partitioned slices (not supported)"
            )
        dtype = DTYPES.get(entry.dtype)
        if dtype is None:
            raise TFCheckpointError(f"{self.index_path}: {name} has unsupported type {entry.dtype_name}")
        count = math.prod(entry.shape)
        if entry.size != count * np.dtype(dtype).itemsize:
            raise TFCheckpointError(
                f"{self.index_path}: {name} has {entry.size} bytes for shape {list(entry.shape)} "
                f"of {entry.dtype_name}"
            )
        path = self.data_paths[entry.shard_id]
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        if len(raw) != entry.size:
            raise TFCheckpointError(
                f"{path} is truncated: {name} needs bytes {entry.offset}..{entry.offset + entry.size}, "
                f"the file has {path.stat().st_size}"
            )
        if entry.crc32c is not None and mask_crc(crc32c(raw)) != entry.crc32c:
            raise TFCheckpointError(f"{path}: checksum mismatch for {name} (damaged file)")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape)  # read-only view of the bytes


def open_checkpoint(path: str | Path) -> TFCheckpoint:
    """Open the checkpoint named by `path` (see `resolve_prefix`)."""
    return TFCheckpoint(resolve_prefix(path))
