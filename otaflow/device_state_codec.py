"""``DeviceState`` to its Avro record, written by hand: the device agent's hottest write.

Every report ends in one state encode. Through cavro it costs a ``to_record`` dict
plus cavro's walk over thirteen fields (~5 us here, a quarter of the worker's time
per report); this writes the same bytes straight from the dataclass in ~2 us
(``python -m benchmarks.codec_bench``). Tasks, rare and nested, still go through
cavro's ``Task`` coder.

The output is byte for byte ``codec().encode("DeviceState", state.to_record())``
(``tests/unit/test_device_state_codec.py`` checks it on generated states). The field
order below is the schema's; ``_check_schema`` refuses to import against a schema that
has changed, so the two cannot drift apart silently.
"""

from __future__ import annotations

from otaflow.codec import codec
from otaflow.domain.devices import DeviceState

FIELDS = (
    "product_key",
    "device_name",
    "online",
    "modules",
    "tasks",
    "match_counts",
    "last_seen",
    "registered",
    "province",
    "city",
    "groups",
    "dynamic_groups",
    "group_matches",
)

_SCHEMA = codec().schema("DeviceState")
_HEADER = _SCHEMA.header
_encode_task = codec().schema("Task").coder.binary_encode


def _check_schema() -> None:
    names = tuple(field["name"] for field in _SCHEMA.parsed["fields"])
    if names != FIELDS:
        raise RuntimeError(
            f"schemas/otaflow.DeviceState.avsc has fields {names}; "
            f"otaflow/device_state_codec.py writes {FIELDS}: update the encoder"
        )


_check_schema()


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Avro ints and longs are zig-zag varints. Two tables make them cheap in Python:
# whole varints below 2**14 (lengths, counts, small values), and two-byte middle
# chunks (both continuation bits set) for larger ones such as millisecond times.
_SMALL = 1 << 14
_WHOLE = tuple(_varint_slow(n) for n in range(_SMALL))
_CHUNK = tuple(bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80)) for n in range(_SMALL))
_TRUE, _FALSE, _ZERO, _SOME = b"\x01", b"\x00", b"\x00", b"\x02"


def _unsigned(n: int) -> bytes:
    """The varint of a non-negative (already zig-zagged) number."""
    if n < _SMALL:
        return _WHOLE[n]
    out = b""
    while n >= _SMALL:
        out += _CHUNK[n & (_SMALL - 1)]
        n >>= 14
    return out + _WHOLE[n]


def _long(n: int) -> bytes:
    return _unsigned((n << 1) ^ (n >> 63))


def encode_device_state(state: DeviceState) -> bytes:
    """The single-object Avro encoding of ``state`` (header included)."""
    product_key = state.product_key.encode()
    device_name = state.device_name.encode()
    parts = [
        _HEADER,
        _unsigned(len(product_key) << 1),
        product_key,
        _unsigned(len(device_name) << 1),
        device_name,
        _TRUE if state.online else _FALSE,
    ]
    add = parts.append
    # Maps and arrays: one block (count, items) then the zero count that ends them.
    if state.modules:
        add(_unsigned(len(state.modules) << 1))
        for module, version in state.modules.items():
            m, v = module.encode(), version.encode()
            parts += (_unsigned(len(m) << 1), m, _unsigned(len(v) << 1), v)
    add(_ZERO)
    if state.tasks:
        add(_unsigned(len(state.tasks) << 1))
        for task in state.tasks:
            add(_encode_task(task.to_record()))
    add(_ZERO)
    if state.match_counts:
        add(_unsigned(len(state.match_counts) << 1))
        for batch_id, count in state.match_counts.items():
            b = batch_id.encode()
            parts += (_unsigned(len(b) << 1), b, _long(count))
    add(_ZERO)
    add(_long(state.last_seen))
    add(_TRUE if state.registered else _FALSE)
    for optional in (state.province, state.city):
        if optional is None:
            add(_ZERO)  # union branch 0: null
        else:
            o = optional.encode()
            parts += (_SOME, _unsigned(len(o) << 1), o)
    for names in (state.groups, state.dynamic_groups, state.group_matches):
        if names:
            add(_unsigned(len(names) << 1))
            for name in names:
                n = name.encode()
                parts += (_unsigned(len(n) << 1), n)
        add(_ZERO)
    return b"".join(parts)
