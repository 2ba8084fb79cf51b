#!/usr/bin/python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/.

The seeds are checked in; rerun this only to change them:  /usr/bin/python3 tests/fuzz/make_corpus.py
Each seed is a small valid input in the layout its target expects (see the comment at the top of
each fuzz_*.cc): frames get a config byte and a seed byte first, HTTP heads a split byte, the
tunnel a setup and a script of operations.
"""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(op, payload=b"", fin=True, mask=MASK, rsv1=False):
    """One RFC 6455 frame with the minimal length encoding; mask=None for server frames."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n <= 0xFFFF:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        head += mask
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + payload


def frames_seed(config, seed, *frames):
    return bytes([config, seed]) + b"".join(frames)


TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
UTF8 = "héllo € 𝄞".encode()

FRAME_SEEDS = {
    "client_text": frames_seed(0x00, 1, frame(TEXT, b"Hello")),
    "server_text": frames_seed(0x00, 2, frame(TEXT, b"Hello", mask=None)),
    "client_fragmented_with_ping": frames_seed(
        0x00, 3, frame(TEXT, b"Hel", fin=False), frame(PING, b"p"), frame(CONT, b"lo")),
    "client_utf8_split_in_char": frames_seed(
        0x00, 4, frame(TEXT, UTF8[:2], fin=False), frame(CONT, UTF8[2:])),
    "client_close_with_reason": frames_seed(
        0x80, 5, frame(BINARY, b"\x00\x01"), frame(CLOSE, struct.pack(">H", 1000) + b"bye")),
    "server_pong_close_empty": frames_seed(
        0x00, 6, frame(PONG, mask=None), frame(CLOSE, mask=None)),
    "client_16bit_length": frames_seed(0x00, 7, frame(BINARY, bytes(range(256)) + bytes(44))),
    "client_64bit_length_partial": frames_seed(
        0x00, 8, frame(BINARY, bytes(70000))[:14 + 20]),
    "client_compressed": frames_seed(
        0x03, 9, frame(TEXT, b"abc", fin=False, rsv1=True), frame(CONT, b"def")),
    "client_small_limits": frames_seed(0x48, 10, frame(TEXT, b"x" * 130)),
    "server_binary_fragments": frames_seed(
        0x10, 11, frame(BINARY, b"ab", fin=False, mask=None), frame(CONT, b"cd", mask=None)),
}

UPGRADE = (b"GET /chat?room=1 HTTP/1.1\r\n"
           b"Host: example.com\r\n"
           b"Upgrade: websocket\r\n"
           b"Connection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
           b"\r\n")

REQUEST_SEEDS = {
    "ws_upgrade_with_frame": bytes([0x80]) + UPGRADE + frame(TEXT, b"hi"),
    "post_content_length": b"\x40POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "post_chunked": (b"\x20POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n"),
    "absolute_form": b"\xc0GET http://example.com/a/b?c=d#frag HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "connect_authority": b"\x10CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "options_asterisk": b"\x08OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipelined": b"\x60GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    "http10_leading_crlf": b"\xff\r\nGET / HTTP/1.0\r\nUser-Agent: t\r\n\r\n",
    # Found by the fuzzer: llhttp's strict mode reports the error at the end of the read, where
    # there is no byte to look at.
    "bare_lf_ends_the_read": (b"\x20POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Enconcgid: \n"),
}

ACCEPT = b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"

RESPONSE_SEEDS = {
    "switching_with_frame": (b"\x80HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n" + ACCEPT + b"\r\n"
                             + frame(TEXT, b"hi", mask=None)),
    "continue_then_switching": (b"\x30HTTP/1.1 100 Continue\r\n\r\n"
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\n" + ACCEPT + b"\r\n"),
    "not_found_content_length": (b"\x40HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 9\r\n\r\nnot found"),
    "chunked_with_trailer": (b"\x60HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"4\r\nnope\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "body_until_eof": b"\xa0HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil eof",
    "no_content_with_length": b"\x10HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    "not_modified": b"\xf0HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "folded_header": b"\x50HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\n realm=x\r\nContent-Length: 0\r\n\r\n",
}


# fuzz_frame_relay: [5 setup bytes][script], hook verdicts from the end (see fuzz_frame_relay.cc).
def deflate_raw(data, wbits=15):
    """A permessage-deflate payload: raw deflate, sync flush, trailing 00 00 FF FF removed."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def setup(frames=False, deflate_legs=0, hooks=False, answer_pings=False, end_to_end=False,
          interval=0, client_agreement=0xFC, upstream_agreement=0xFC, limit=7, ping_timeout=3,
          close_timeout=3, fail_write=0):
    """The 5 setup bytes. Agreements: bit 0 server_no_context_takeover, bit 1
    client_no_context_takeover, bits 2-4 / 5-7 server_ / client_max_window_bits - 8 (0xFC: 15/15).
    interval, limit, ping_timeout, close_timeout: indexes into the target's tables."""
    b0 = ((1 if frames else 0) | (deflate_legs << 1) | (0x08 if hooks else 0)
          | (0x10 if answer_pings else 0) | (0x20 if end_to_end else 0) | (interval << 6))
    b3 = limit | (ping_timeout << 3) | (close_timeout << 5)
    return bytes([b0, client_agreement, upstream_agreement, b3, fail_write])


def agreement(server_nct=False, client_nct=False, server_bits=15, client_bits=15):
    return ((1 if server_nct else 0) | (2 if client_nct else 0) | ((server_bits - 8) << 2)
            | ((client_bits - 8) << 5))


def raw(from_client, data, split=0):
    """Script op: bytes from the client (masked frames) or the upstream, read in pieces of at
    most [whole, 1, 2, 3, 7, 16, 100, 1500][split & 7] bytes."""
    out = b""
    for i in range(0, len(data), 255):
        piece = data[i:i + 255]
        out += bytes([0 if from_client else 1, len(piece), split]) + piece
    return out


def built(from_client, op, payload=b"", fin=True, compress=False, split=0):
    """Script op: a frame the target builds (and masks, and compresses with its own Deflater)."""
    flags = [CONT, TEXT, BINARY, CLOSE, PING, PONG].index(op)
    flags |= (0 if fin else 0x08) | (0x20 if compress else 0)
    assert len(payload) < 0xF0
    return bytes([2 if from_client else 3, flags, len(payload), split]) + payload


def advance(units, scale=2, extra_fire=False):
    """Script op: time passes, units * [1, 10, 100, 1000][scale] ms."""
    return bytes([4 | (scale << 3) | (0x20 if extra_fire else 0), units])


def close_op(code_index, reason_len=0, chars=0):
    """Script op: close(code, reason); code from [1000, 1001, 1008, 1011, 1012, 3000, 4000, 4999]."""
    return bytes([5 | (chars << 3), code_index, reason_len])


def client(op, payload=b"", **kw):
    return frame(op, payload, **kw)


def server(op, payload=b"", **kw):
    return frame(op, payload, mask=None, **kw)


CLOSE_1000 = struct.pack(">H", 1000)
PING_REPLY = b"upgate-keepalive"
LOREM = b"the quick brown fox jumps over the lazy dog; " * 4
TEXT_UTF8 = "h\u00e9llo \u20ac \U0001d11e \u00e9t\u00e9".encode()

RELAY_SEEDS = {
    "passthrough_echo_close": setup() + raw(True, client(TEXT, b"Hello")) + raw(
        False, server(TEXT, b"Hello")) + raw(True, client(CLOSE, CLOSE_1000), split=1) + raw(
        False, server(CLOSE, CLOSE_1000)),
    "passthrough_keepalive_drain": setup(interval=2, ping_timeout=2) + raw(
        True, client(BINARY, bytes(range(200))), split=4) + advance(15)
        + raw(True, client(PONG, PING_REPLY)) + raw(False, server(PONG, PING_REPLY))
        + close_op(1, 20, 1) + raw(True, client(CLOSE, CLOSE_1000)),
    "frames_fragments_ping_close": setup(frames=True) + raw(
        True, client(TEXT, TEXT_UTF8[:5], fin=False) + client(PING, b"p")
        + client(CONT, TEXT_UTF8[5:]), split=2) + raw(False, server(PONG, b"p")) + raw(
        False, server(BINARY, LOREM), split=5) + raw(
        True, client(CLOSE, CLOSE_1000 + b"bye")) + raw(False, server(CLOSE, CLOSE_1000)),
    "frames_answer_pings_keepalive": setup(frames=True, answer_pings=True, interval=1,
                                           ping_timeout=1) + raw(True, client(PING, b"hi"))
        + raw(False, server(PING, b"yo")) + advance(6, scale=1)
        + raw(False, server(PONG, PING_REPLY)) + advance(20, scale=1) + advance(10, scale=2),
    "frames_deflate_client": setup(frames=True, deflate_legs=1) + raw(
        True, client(TEXT, deflate_raw(LOREM), rsv1=True), split=3) + raw(
        False, server(TEXT, LOREM)) + raw(
        True, client(BINARY, deflate_raw(bytes(300)), rsv1=True)) + raw(
        True, client(CLOSE, CLOSE_1000)) + raw(False, server(CLOSE, CLOSE_1000)),
    "frames_deflate_upstream_fragmented": setup(frames=True, deflate_legs=2) + raw(
        False, server(TEXT, deflate_raw(TEXT_UTF8 * 3)[:6], fin=False, rsv1=True)
        + server(CONT, deflate_raw(TEXT_UTF8 * 3)[6:]), split=6) + raw(
        True, client(TEXT, TEXT_UTF8)),
    "frames_deflate_both_no_context_takeover": setup(
        frames=True, deflate_legs=3,
        client_agreement=agreement(server_nct=True, client_nct=True, server_bits=9,
                                   client_bits=10),
        upstream_agreement=agreement(server_nct=True, server_bits=12, client_bits=8)) + raw(
        True, client(TEXT, deflate_raw(LOREM, 10), rsv1=True)) + raw(
        True, client(TEXT, deflate_raw(LOREM, 10), rsv1=True)) + raw(
        False, server(BINARY, deflate_raw(LOREM + LOREM, 12), rsv1=True), split=7) + raw(
        False, server(TEXT, deflate_raw(b"", 12), rsv1=True)),
    "frames_deflate_built": setup(frames=True, deflate_legs=3) + built(
        True, TEXT, LOREM[:100], fin=False, compress=True) + built(
        True, CONT, LOREM[:100], compress=True, split=4) + built(
        False, BINARY, bytes(120), compress=True) + built(True, CLOSE, CLOSE_1000),
    "frames_hooks_verdicts": setup(frames=True, hooks=True, deflate_legs=1) + raw(
        True, client(TEXT, deflate_raw(b"pass me"), rsv1=True)) + raw(
        False, server(TEXT, b"rewrite me")) + raw(True, client(BINARY, b"drop me")) + raw(
        False, server(TEXT, b"close")) + bytes([0x23, 0x01, 0x0a, 0x00]),  # CLOSE, DROP, REWRITE, PASS
    "frames_end_to_end_deflate": setup(frames=True, end_to_end=True, limit=2) + raw(
        True, client(TEXT, deflate_raw(b"abc"), rsv1=True)) + raw(
        False, server(BINARY, deflate_raw(bytes(50)), rsv1=True)) + close_op(0)
        + raw(True, client(CLOSE, CLOSE_1000)) + raw(False, server(CLOSE)),
    "frames_violation_then_timeout": setup(frames=True, close_timeout=1) + raw(
        True, client(TEXT, b"ok")) + raw(True, server(TEXT, b"unmasked")) + advance(2),
    # close() with a 102-byte reason of 3-byte characters: the close frames must carry whole
    # characters of it (valid UTF-8, RFC 6455 §5.5.1) however it is shortened.
    "close_reason_cut_in_character": setup() + close_op(0, 101, chars=2),
    "frames_write_fails": setup(frames=True, fail_write=2) + raw(
        True, client(TEXT, b"one") + client(TEXT, b"two") + client(TEXT, b"three"), split=4),
}


# fuzz_tcp_bridge: [setup][script] (see fuzz_tcp_bridge.cc). setup: bits 0-1 message limit,
# 2-3 keepalive interval, 4-7 failing write.
def bridge_frame(flags, payload, split=0):
    return bytes([1 | (split << 3), flags, len(payload)]) + payload


def bridge_up(data):
    return bytes([2, len(data)]) + data


BRIDGE_SEEDS = {
    "binary_both_ways": bytes([0x03]) + bridge_frame(2, b"hello") + bridge_up(b"world"),
    "text_then_close": bytes([0x02]) + bridge_frame(1, "h\u00e9".encode()) +
    bridge_frame(3, b"\x03\xe8bye"),
    "fragmented_split": bytes([0x03]) + bridge_frame(0x0A, b"par", split=3) +
    bridge_frame(0, b"tial", split=2) + bridge_up(b"x" * 40),
    "ping_pong": bytes([0x03]) + bridge_frame(4, b"p1") + bridge_frame(5, b"p2"),
    "upstream_end": bytes([0x03]) + bridge_up(b"last") + bytes([5]) + bridge_frame(3, b"\x03\xe8"),
    "keepalive_silent": bytes([0x07]) + bytes([3 | (2 << 3), 50]),
    "server_close_timeout": bytes([0x03]) + bytes([4, 1]) + bytes([3 | (1 << 3), 20]),
    "unmasked": bytes([0x03]) + bridge_frame(0x12, b"no mask"),
    "raw_garbage": bytes([0x00]) + bytes([0, 6]) + b"\x82\xff\x00\x00\x00\x00",
    "write_fails": bytes([0x23]) + bridge_frame(2, b"a") + bridge_up(b"b") + bridge_up(b"c"),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("fuzz_frame_parser", FRAME_SEEDS)
    write("fuzz_request_parser", REQUEST_SEEDS)
    write("fuzz_response_parser", RESPONSE_SEEDS)
    write("fuzz_frame_relay", RELAY_SEEDS)
    write("fuzz_tcp_bridge", BRIDGE_SEEDS)
