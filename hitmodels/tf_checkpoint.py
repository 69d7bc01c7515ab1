"""Read a TensorFlow checkpoint (a tensor bundle) without TensorFlow.

A TF 1.x/2.x checkpoint ``PREFIX`` is two files: ``PREFIX.index``, a LevelDB-format sorted table whose keys
are variable names and whose values are ``BundleEntryProto`` messages (dtype, shape, shard, byte offset,
size, masked CRC-32C), and ``PREFIX.data-00000-of-00001``, the tensors' raw little-endian bytes back to back.
This module reads just that: the table's footer, index and data blocks (uncompressed, as TensorFlow writes
bundles; Snappy blocks are refused with a clear error), the protobuf wire format of the entries, and the
bytes they point to. It is what loads musicnn's pretrained weights (:mod:`hitmodels.tagger`), and it never
executes anything from the files: a checkpoint is data.

Format references: LevelDB's ``table_format.md``, TensorFlow's ``tensor_bundle.proto`` and
``tensor_bundle.cc``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type (1) + masked CRC-32C (4)
MAX_INDEX_BYTES = 64 << 20  # an index is a few KB per thousand variables; refuse anything absurd
MAX_DATA_BYTES = 4 << 30

# tensorflow/core/framework/types.proto: DataType enum -> numpy dtype (little-endian). The ones checkpoints of
# ordinary models hold; others are refused by name.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "|u1", 5: "<i2", 6: "|i1", 9: "<i8", 10: "|b1", 17: "<u2",
          19: "<f2", 22: "<u4", 23: "<u8"}


class CheckpointError(ValueError):
    """A checkpoint file that is not a readable tensor bundle; the message names the file and the fault."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in the data file, as the index records it."""

    name: str
    dtype: str      # numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...]
    shard: int
    offset: int     # bytes from the start of the data shard
    size: int       # bytes
    crc32c: int     # masked CRC-32C of the bytes, as TensorFlow stores it


# --- LevelDB table ------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _block(table: bytes, offset: int, size: int, where: str) -> bytes:
    end = offset + size
    if offset < 0 or end + BLOCK_TRAILER_BYTES > len(table):
        raise CheckpointError(f"{where}: block [{offset}, {end}) lies outside the {len(table)}-byte table")
    compression = table[end]
    if compression != 0:
        raise CheckpointError(f"{where}: block compression {compression} (1 = Snappy) is not supported; "
                              "TensorFlow writes checkpoint indexes uncompressed")
    stored = struct.unpack_from("<I", table, end + 1)[0]
    actual = masked_crc32c(table[offset:end + 1])  # the CRC covers the block and its type byte
    if stored != actual:
        raise CheckpointError(f"{where}: block at {offset} fails its checksum (stored {stored:#x}, "
                              f"computed {actual:#x})")
    return table[offset:end]


def _block_entries(block: bytes, where: str):
    """(key, value) of every entry of a table block, keys un-prefix-compressed."""
    if len(block) < 4:
        raise CheckpointError(f"{where}: block shorter than its restart count")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise CheckpointError(f"{where}: {n_restarts} restart points do not fit the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError(f"{where}: corrupt entry at byte {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_len]
        pos += value_len


def table_items(table: bytes, where: str = "index") -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-format table held in memory, in key order."""
    if len(table) < FOOTER_BYTES:
        raise CheckpointError(f"{where}: {len(table)} bytes is shorter than a table footer")
    footer = table[-FOOTER_BYTES:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{where}: not a TensorFlow/LevelDB table (bad magic number)")
    _meta_off, pos = _varint(footer, 0)
    _meta_size, pos = _varint(footer, pos)
    index_off, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    items = []
    for _, handle in _block_entries(_block(table, index_off, index_size, where), where):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        items.extend(_block_entries(_block(table, off, size, where), where))
    return items


# --- protobuf wire format -----------------------------------------------------------------------------------

def _fields(msg: bytes):
    """(field number, wire type, value) of a protobuf message; lengths-delimited values are bytes."""
    pos = 0
    while pos < len(msg):
        tag, pos = _varint(msg, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(msg, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", msg, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(msg, pos)
            value, pos = msg[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = struct.unpack_from("<I", msg, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _shape(msg: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 { int64 size = 1; }."""
    dims = []
    for field, _, value in _fields(msg):
        if field == 2:
            size = next((v for f, _, v in _fields(value) if f == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif field == 3 and value:
            raise CheckpointError("a tensor of unknown rank")
    return tuple(dims)


def _entry(name: str, msg: bytes) -> TensorEntry:
    """BundleEntryProto: dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5, crc32c = 6, slices = 7."""
    got = {1: 0, 3: 0, 4: 0, 5: 0, 6: 0}
    shape: tuple[int, ...] = ()
    for field, _, value in _fields(msg):
        if field == 2:
            shape = _shape(value)
        elif field == 7:
            raise CheckpointError(f"{name}: partitioned (sliced) variables are not supported")
        elif field in got:
            got[field] = value
    if got[1] not in DTYPES:
        raise CheckpointError(f"{name}: TensorFlow dtype {got[1]} is not supported")
    return TensorEntry(name=name, dtype=DTYPES[got[1]], shape=shape, shard=got[3], offset=got[4], size=got[5],
                       crc32c=got[6])


# --- CRC-32C (Castagnoli), as LevelDB and TensorFlow mask it ------------------------------------------------

@lru_cache(maxsize=1)
def _crc_tables() -> list[list[int]]:
    """Slicing-by-8 lookup tables: 8 lists of 256 ints."""
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t0.append(c)
    tables = [t0]
    for _ in range(7):
        tables.append([(c >> 8) ^ t0[c & 0xFF] for c in tables[-1]])
    return tables


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (slicing-by-8 in Python: about 10 MB/s, enough for a checkpoint of a few MB)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _crc_tables()
    crc = 0xFFFFFFFF
    n8 = len(data) - len(data) % 8
    for (lo, hi) in struct.iter_unpack("<II", memoryview(data)[:n8]):
        lo ^= crc
        crc = (t7[lo & 0xFF] ^ t6[(lo >> 8) & 0xFF] ^ t5[(lo >> 16) & 0xFF] ^ t4[lo >> 24]
               ^ t3[hi & 0xFF] ^ t2[(hi >> 8) & 0xFF] ^ t1[(hi >> 16) & 0xFF] ^ t0[hi >> 24])
    for b in data[n8:]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """LevelDB's masked CRC (rotated right by 15 bits, plus a constant), which is what files store."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --- the bundle ---------------------------------------------------------------------------------------------

def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
    if size > limit:
        raise CheckpointError(f"{path}: {size} bytes is over the {limit}-byte bound for this file")
    return path.read_bytes()


def read_index(prefix: str | Path) -> dict[str, TensorEntry]:
    """The tensors a checkpoint holds, by name (``PREFIX.index`` only; the bundle header is skipped)."""
    path = Path(f"{prefix}.index")
    table = _read_bounded(path, MAX_INDEX_BYTES)
    entries = {}
    for key, value in table_items(table, where=str(path)):
        if key == b"":  # BundleHeaderProto: shard count and endianness
            for field, _, v in _fields(value):
                if field == 2 and v != 0:
                    raise CheckpointError(f"{path}: big-endian bundles are not supported")
            continue
        name = key.decode("utf-8")
        entries[name] = _entry(name, value)
    return entries


def read_tensors(prefix: str | Path, names: list[str] | None = None, verify: bool = True) -> dict[str, np.ndarray]:
    """The named tensors (all when ``names`` is None) as numpy arrays in TensorFlow's own layout.

    ``verify`` checks each tensor's CRC-32C against the index. Raises :class:`CheckpointError` naming the
    file and tensor on any mismatch (missing name, size that disagrees with dtype x shape, bad checksum)."""
    index = read_index(prefix)
    wanted = list(index) if names is None else names
    missing = [n for n in wanted if n not in index]
    if missing:
        raise CheckpointError(f"{prefix}: no tensor named {', '.join(missing[:5])}")
    shards = {index[n].shard for n in wanted}
    if shards - {0}:
        raise CheckpointError(f"{prefix}: multi-shard bundles are not supported (shards {sorted(shards)})")
    data = _read_bounded(Path(f"{prefix}.data-00000-of-00001"), MAX_DATA_BYTES)
    out = {}
    for name in wanted:
        e = index[name]
        expected = int(np.prod(e.shape, dtype=np.int64)) * np.dtype(e.dtype).itemsize
        if e.size != expected or e.offset + e.size > len(data):
            raise CheckpointError(f"{prefix}: tensor {name} claims {e.size} bytes at {e.offset}; "
                                  f"{e.dtype} x {e.shape} is {expected} and the data file has {len(data)}")
        raw = data[e.offset:e.offset + e.size]
        if verify and masked_crc32c(raw) != e.crc32c:
            raise CheckpointError(f"{prefix}: tensor {name} fails its checksum")
        out[name] = np.frombuffer(raw, dtype=e.dtype).reshape(e.shape).astype(np.dtype(e.dtype).newbyteorder("="))
    return out
