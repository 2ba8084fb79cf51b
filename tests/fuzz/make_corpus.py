#!/usr/bin/python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/.

The seeds are checked in; rerun this only to change them:  /usr/bin/python3 tests/fuzz/make_corpus.py
Each seed is a small valid input in the layout its target expects (see the comment at the top of
each fuzz_*.cc): frames get a config byte and a seed byte first, HTTP heads a split byte.
"""

import os
import struct

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
