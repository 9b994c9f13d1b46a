"""An iterative little-endian DICOM data-set walker over a bounded byte source.

The walker never trusts a length: every element must end inside the source (else the file is malformed), it
reads through a fixed-size window instead of growing one buffer (no quadratic copying on long headers),
undefined-length sequences are skipped with an explicit stack capped at :data:`MAX_DEPTH` (no recursion),
and a deflated data set is inflated up to :data:`INFLATE_LIMIT` bytes (no zip bomb, no ``zlib.error``).
"""

from __future__ import annotations

import os
import struct
import zlib

WINDOW = 16384  # bytes read at a time; most CT headers end within the first window
MAX_DEPTH = 32  # nested undefined-length sequences/items; real data sets stay below ten
INFLATE_LIMIT = 16 << 20  # inflated bytes kept of a deflated data set (headers are far smaller)
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")
_TAG = struct.Struct("<HH")


class DicomReadError(ValueError):
    """A file that is not readable DICOM; the message is a one-line reason (why the file was skipped)."""


class Unsupported(Exception):
    """A layout the fast walker does not handle (another reader may)."""


class FileSource:
    """Random access to the bytes of an open file (``os.pread``; no shared file position)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, os.fstat(fd).st_size

    def read(self, pos: int, n: int) -> bytes:
        return os.pread(self.fd, max(0, min(n, self.size - pos)), pos)


class BytesSource:
    """Random access to bytes in memory (an inflated data set)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def read(self, pos: int, n: int) -> bytes:
        return self.data[pos : pos + n]


def inflate(source: FileSource, start: int, limit: int = INFLATE_LIMIT) -> BytesSource:
    """The raw-deflate stream of ``source`` from ``start``, inflated to at most ``limit`` bytes."""
    inflater, out, pos = zlib.decompressobj(-zlib.MAX_WBITS), bytearray(), start
    try:
        while len(out) < limit and pos < source.size:
            chunk = source.read(pos, 1 << 16)
            pos += len(chunk)
            out += inflater.decompress(chunk, limit - len(out))
            if inflater.eof or inflater.unconsumed_tail:  # end of stream, or the limit reached
                break
    except zlib.error as err:
        raise DicomReadError(f"deflated data set is not a valid deflate stream ({err})") from None
    return BytesSource(bytes(out))


class Walker:
    """Walks one little-endian data set of ``source`` (explicit or implicit VR) through a small window."""

    def __init__(self, source, implicit: bool) -> None:
        self.src, self.implicit = source, implicit
        self.buf, self.base = b"", 0

    def at(self, pos: int, n: int) -> int:
        """Offset in ``self.buf`` where the ``n`` bytes at ``pos`` are (read them when not in the window)."""
        if pos + n > self.src.size:
            raise DicomReadError(f"an element runs past the end of the file (at byte {pos})")
        off = pos - self.base
        if off < 0 or off + n > len(self.buf):
            self.buf, self.base, off = self.src.read(pos, max(n, WINDOW)), pos, 0
        return off

    def value(self, start: int, length: int) -> bytes:
        off = self.at(start, length)
        return self.buf[off : off + length]

    def element(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """``(tag, vr, value_start, length)`` of the element at ``pos``; a defined length must fit the file."""
        off = self.at(pos, 8)
        group, elem = _TAG.unpack_from(self.buf, off)
        tag = group << 16 | elem
        if implicit or group == 0xFFFE:  # item and delimiter tags never carry a VR
            vr, start, length = None, pos + 8, _U32.unpack_from(self.buf, off + 4)[0]
        else:
            vr = self.buf[off + 4 : off + 6]
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise Unsupported("explicit VR expected")
            if vr in LONG_VRS:
                off = self.at(pos, 12)
                vr, start, length = vr, pos + 12, _U32.unpack_from(self.buf, off + 8)[0]
            else:
                start, length = pos + 8, _U16.unpack_from(self.buf, off + 6)[0]
        if length != UNDEFINED and start + length > self.src.size:
            raise DicomReadError(f"an element runs past the end of the file (({group:04X},{elem:04X}), {length} bytes)")
        return tag, vr, start, length

    def skip_undefined(self, pos: int, implicit: bool) -> int:
        """Skip an undefined-length sequence whose first item starts at ``pos``; position after its delimiter.

        Iterative: ``stack`` holds ``(in_item, implicit)`` per open sequence or item, capped at MAX_DEPTH.
        """
        stack = [(False, implicit)]
        while stack:
            in_item, imp = stack[-1]
            tag, vr, start, length = self.element(pos, imp)
            if tag == (ITEM_END if in_item else SEQ_END):
                stack.pop()
                pos = start
                continue
            if not in_item and tag != ITEM:
                raise Unsupported("malformed sequence")
            if length == UNDEFINED:
                stack.append((not in_item, imp or vr == b"UN"))  # an item opens, or a sequence inside an item
                if len(stack) > MAX_DEPTH:
                    raise DicomReadError(f"sequences nested deeper than {MAX_DEPTH} levels")
                pos = start
            else:
                pos = start + length
        return pos

    def walk(self, pos: int, wanted, last_tag: int) -> tuple[dict[int, tuple[bytes | None, bytes]], int]:
        """Raw values of the ``wanted`` tags from ``pos`` to the first tag past ``last_tag``; the stop position."""
        found: dict[int, tuple[bytes | None, bytes]] = {}
        while pos + 8 <= self.src.size:  # else: end of file, a header without pixel data
            try:
                tag, vr, start, length = self.element(pos, self.implicit)
            except DicomReadError:
                if _tag_at(self, pos) > last_tag:
                    return found, pos  # the pixel data or a later element is cut: the header is whole
                raise
            if tag > last_tag:
                return found, pos
            if length == UNDEFINED:
                pos = self.skip_undefined(start, self.implicit or vr == b"UN")
                continue
            if tag in wanted:
                found[tag] = (vr, self.value(start, length))
            pos = start + length
        return found, pos


def _tag_at(walker: Walker, pos: int) -> int:
    off = walker.at(pos, 4)
    group, elem = _TAG.unpack_from(walker.buf, off)
    return group << 16 | elem
