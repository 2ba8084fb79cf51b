"""WebSocket frames at the byte level, for every test that speaks raw frames (harness.py's
encode_frame and FrameReader are built on it; the conformance suite uses it directly).

It can write and read everything a test needs to say or to see: RSV bits, any opcode, fin on
control frames, a chosen or absent mask, a declared length that differs from the payload, and
non-minimal length encodings. The reader never validates: it is what the lenient peers use to
record what reached them.
"""

import os
import struct
import zlib

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 4, 2, 1  # values of the 3-bit rsv field (bit 6, 5, 4 of the first byte)

OP_NAMES = {OP_CONT: "cont", OP_TEXT: "text", OP_BINARY: "binary", OP_CLOSE: "close",
            OP_PING: "ping", OP_PONG: "pong"}


def mask_bytes(data, key):
    """XOR `data` with the 4-byte `key` (RFC 6455 §5.3)."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, rsv=0, mask=None, length=None, form=None):
    """Encode one frame.

    mask:   None/False -> unmasked; True -> random key; 4 bytes -> that key.
    length: the declared payload length (defaults to len(payload)); the payload is written as
            given, so a larger declared length leaves the frame incomplete on purpose.
    form:   7, 16 or 64 to force a length encoding (default: the minimal one).
    """
    payload = bytes(payload)
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)])
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    mbit = 0x80 if mask else 0
    if form == 7:
        head.append(mbit | n)
    elif form == 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if mask:
        key = os.urandom(4) if mask is True else bytes(mask)
        head += key
        payload = mask_bytes(payload, key)
    return bytes(head) + payload


def cframe(opcode, payload=b"", **kw):
    """A frame as a client sends it (masked unless mask= says otherwise)."""
    kw.setdefault("mask", True)
    return frame(opcode, payload, **kw)


def uframe(opcode, payload=b"", **kw):
    """A frame as a server sends it (unmasked unless mask= says otherwise)."""
    kw.setdefault("mask", None)
    return frame(opcode, payload, **kw)


def close_body(code=None, reason=b""):
    if code is None:
        return b""
    return struct.pack("!H", code) + reason


class Frame:
    """One decoded frame; `raw` is its exact wire bytes and `offset` where it started in the
    stream it was read from."""

    __slots__ = ("fin", "rsv", "opcode", "masked", "key", "length", "payload", "raw", "offset")

    def __init__(self, fin, rsv, opcode, masked, key, length, payload, raw, offset):
        self.fin, self.rsv, self.opcode, self.masked = fin, rsv, opcode, masked
        self.key, self.length, self.payload, self.raw, self.offset = key, length, payload, raw, offset

    @property
    def close_code(self):
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self):
        return self.payload[2:]

    @property
    def rsv1(self):
        return bool(self.rsv & RSV1)

    def __repr__(self):
        name = OP_NAMES.get(self.opcode, "op%X" % self.opcode)
        bits = "%s%s%s" % ("F" if self.fin else "-", "rsv%d" % self.rsv if self.rsv else "",
                           " masked" if self.masked else "")
        if self.opcode == OP_CLOSE and self.close_code is not None:
            body = "code=%d reason=%r" % (self.close_code, self.close_reason[:40])
        else:
            body = "%d bytes %r" % (len(self.payload), self.payload[:24])
        return "<%s %s %s @%d>" % (name, bits, body, self.offset)


class FrameStream:
    """Incremental, non-validating decoder for one direction: feed() bytes, get Frames."""

    def __init__(self):
        self.buf = bytearray()
        self.consumed = 0  # stream offset of buf[0]

    def feed(self, data):
        self.buf += data
        out = []
        for _ in range(1 << 20):
            f = self._one()
            if f is None:
                break
            out.append(f)
        return out

    def next_frame(self):
        """The next complete frame, or None (the rest stays buffered)."""
        return self._one()

    @property
    def pending(self):
        """Bytes of an incomplete frame at the end of the stream."""
        return len(self.buf)

    def _one(self):
        b = self.buf
        if len(b) < 2:
            return None
        fin, rsv, opcode = bool(b[0] & 0x80), (b[0] >> 4) & 7, b[0] & 0x0F
        masked, n = bool(b[1] & 0x80), b[1] & 0x7F
        pos = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack_from("!H", b, 2)[0]
            pos = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack_from("!Q", b, 2)[0]
            pos = 10
        key = None
        if masked:
            if len(b) < pos + 4:
                return None
            key = bytes(b[pos:pos + 4])
            pos += 4
        if len(b) < pos + n:
            return None
        raw = bytes(b[:pos + n])
        payload = raw[pos:]
        if key:
            payload = mask_bytes(payload, key)
        f = Frame(fin, rsv, opcode, masked, key, n, payload, raw, self.consumed)
        del b[:pos + n]
        self.consumed += pos + n
        return f


def frame_boundaries(stream):
    """Offsets at which frames start or end in a byte stream (of complete frames, plus maybe
    an incomplete last one)."""
    fs = FrameStream()
    out = {0}
    for f in fs.feed(stream):
        out.add(f.offset + len(f.raw))
    return out


def deflate_message(data):
    """permessage-deflate payload of one message compressed on its own (RFC 7692 §7.2.1)."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_message(data):
    d = zlib.decompressobj(-15)
    return d.decompress(data + b"\x00\x00\xff\xff")


def is_utf8(data):
    try:
        bytes(data).decode("utf-8", "strict")
        return True
    except UnicodeDecodeError:
        return False
