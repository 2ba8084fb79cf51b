#!/usr/bin/env node
// Interop test: node's `ws` (a second WebSocket implementation, independent of python-websockets
// and of upgate's own code) on both sides of upgate in frames mode with per-leg
// permessage-deflate. Plain node, no framework; run.sh installs `ws` and calls this script.
//
//   UPGATE_BIN=... node ws_roundtrip.test.js
//
// Starts, all on 127.0.0.1 port 0: a node `ws` echo server that accepts permessage-deflate, the
// python3-websockets echo server of py_echo.py (no compression), and upgate (routes in frames
// mode: compression on both legs, and client on / upstream off, towards each upstream). Then,
// per scenario, a node `ws` client exchanges text and binary messages, small and 64 KiB+, whole
// and fragmented, and checks:
//   - every echo is identical (content and text/binary type);
//   - the extensions negotiated on each leg: what the client's 101 answered, what the upstream
//     was offered and agreed;
//   - on the wire, that a compressed leg carries far fewer bytes than the payload of a
//     compressible message and an uncompressed leg at least the payload.
// Ends with SIGTERM to upgate, which must exit 0. Exit 0 = pass, 1 = fail. Every wait is bounded.
'use strict';

const { spawn } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');

let WebSocket, WebSocketServer;
try {
  ({ WebSocket, WebSocketServer } = require('ws'));
} catch (e) {
  console.error('[interop] FAIL: cannot load ws (run.sh installs it with npm ci and sets ' +
                'NODE_PATH): ' + e.message);
  process.exit(1);
}

const HERE = __dirname;
const PYTHON = process.env.UPGATE_IT_PYTHON || '/usr/bin/python3';
const UPGATE = process.env.UPGATE_BIN || path.join(HERE, '..', '..', 'build', 'gateway', 'upgate');
const WAIT_MS = 10000;     // one step (start, open, echo, close)
const TOTAL_MS = 120000;   // the whole test

const t0 = Date.now();
const log = (msg) => console.log(`[interop +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);

class Failure extends Error {}

function check(cond, msg) {
  if (!cond) throw new Failure(msg);
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Failure(`${what}: not within ${ms / 1000}s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the upstreams -------------------------------------------------------------------------

// node `ws` echo server, compression accepted (threshold 0: every message is compressed).
function startNodeUpstream() {
  const sessions = [];
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 0,
                                       perMessageDeflate: { threshold: 0 } });
  server.on('connection', (ws, req) => {
    sessions.push({ path: req.url, offered: req.headers['sec-websocket-extensions'] || '',
                    agreed: ws.extensions, socket: req.socket });
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => {});
  });
  return withTimeout(new Promise((resolve, reject) => {
    server.once('listening', () => resolve({ server, sessions, port: server.address().port }));
    server.once('error', reject);
  }), WAIT_MS, 'node ws upstream listening');
}

// python3-websockets echo server (py_echo.py): "PORT n", then one JSON line per session.
function startPythonUpstream(work) {
  const proc = spawn(PYTHON, [path.join(HERE, 'py_echo.py')],
                     { stdio: ['ignore', 'pipe', fs.openSync(path.join(work, 'py.err'), 'w')] });
  const sessions = [];
  let port = null;
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const m = /^PORT (\d+)$/.exec(line);
    if (m) port = Number(m[1]);
    else if (line.startsWith('{')) sessions.push(JSON.parse(line));
  });
  return pollUntil(() => {
    if (proc.exitCode !== null) {
      throw new Failure(`py_echo.py exited with ${proc.exitCode}: ` +
                        fs.readFileSync(path.join(work, 'py.err'), 'utf8'));
    }
    return port;
  }, WAIT_MS, 'python upstream port').then(() => ({ proc, sessions, port }));
}

async function pollUntil(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (let i = 0; i < ms / 20 + 100; i++) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) break;
    await sleep(20);
  }
  throw new Failure(`${what}: not within ${ms / 1000}s`);
}

// ---- upgate ---------------------------------------------------------------------------------

const BOTH = '{ client: on, upstream: on }';
const CLIENT_ONLY = '{ client: on, upstream: off }';

async function startUpgate(work, nodePort, pyPort) {
  const config = `workers: 2
drain_timeout: 2s
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  node:
    endpoints: [127.0.0.1:${nodePort}]
  py:
    endpoints: [127.0.0.1:${pyPort}]
routes:
  - { name: both-node, match: { path_prefix: /both/node }, upstream: node, mode: frames, compression: ${BOTH} }
  - { name: both-py, match: { path_prefix: /both/py }, upstream: py, mode: frames, compression: ${BOTH} }
  - { name: client-node, match: { path_prefix: /client/node }, upstream: node, mode: frames, compression: ${CLIENT_ONLY} }
  - { name: client-py, match: { path_prefix: /client/py }, upstream: py, mode: frames, compression: ${CLIENT_ONLY} }
log: { level: info, access_log: false }
`;
  const configPath = path.join(work, 'upgate.yaml');
  const ready = path.join(work, 'ready');
  fs.writeFileSync(configPath, config);
  const stderrPath = path.join(work, 'upgate.err');
  const proc = spawn(UPGATE, ['-c', configPath, '--ready-file', ready],
                     { stdio: ['ignore', 'ignore', fs.openSync(stderrPath, 'w')] });
  const gw = { proc, stderrPath, exit: null };
  gw.exited = new Promise((resolve) => proc.on('exit', (code, sig) => {
    gw.exit = sig ? `signal ${sig}` : code;
    resolve(gw.exit);
  }));
  await pollUntil(() => {
    if (gw.exit !== null) throw new Failure(`upgate exited with ${gw.exit} before its ready file`);
    return fs.existsSync(ready) && fs.readFileSync(ready, 'utf8').includes('\n');
  }, WAIT_MS, "upgate's ready file");
  const m = /^public (127\.0\.0\.1:\d+)$/m.exec(fs.readFileSync(ready, 'utf8'));
  check(m, 'unexpected ready file: ' + fs.readFileSync(ready, 'utf8'));
  gw.addr = m[1];
  return gw;
}

// ---- the client -----------------------------------------------------------------------------

async function openClient(url, deflate) {
  const ws = new WebSocket(url, { maxPayload: 0,
                                  perMessageDeflate: deflate ? { threshold: 0 } : false });
  const client = { ws, socket: null, answered: null, queue: [], waiters: [] };
  ws.on('upgrade', (res) => {
    client.socket = res.socket;
    client.answered = res.headers['sec-websocket-extensions'] || '';
  });
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    const w = client.waiters.shift();
    if (w) w(m);
    else client.queue.push(m);
  });
  ws.on('error', (e) => log(`client error on ${url}: ${e.message}`));
  await withTimeout(new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Failure(`${url}: HTTP ${res.statusCode}`)));
  }), WAIT_MS, `open ${url}`);
  client.recv = () => withTimeout(new Promise((resolve) => {
    const m = client.queue.shift();
    if (m) resolve(m);
    else client.waiters.push(resolve);
  }), WAIT_MS, `echo on ${url}`);
  return client;
}

function sendAsync(ws, data, opts) {
  return withTimeout(new Promise((resolve, reject) => {
    ws.send(data, opts, (err) => (err ? reject(err) : resolve()));
  }), WAIT_MS, 'send');
}

const repeat = (s, n) => s.repeat(Math.ceil(n / s.length)).slice(0, n);

// [name, pieces, binary, compressible]: pieces > 1 are sent as one fragmented message.
const MESSAGES = [
  ['small text', ['hello from node ws \u00e9\u4e16\u754c'], false, false],
  ['small binary', [Buffer.from([...Array(256).keys()])], true, false],
  ['100 KiB text', [repeat('upgate interop over permessage-deflate; ', 100 * 1024)], false, true],
  ['256 KiB random binary', [crypto.randomBytes(256 * 1024)], true, false],
  ['64 KiB zero binary', [Buffer.alloc(64 * 1024)], true, true],
  ['fragmented text, 3 x 30 KiB',
   [repeat('alpha ', 30 * 1024), repeat('beta ', 30 * 1024), repeat('gamma ', 30 * 1024)],
   false, true],
  ['fragmented binary, 2 x 40 KiB', [crypto.randomBytes(40 * 1024), Buffer.alloc(40 * 1024, 7)],
   true, false],
];

function whole(pieces, binary) {
  return binary ? Buffer.concat(pieces) : pieces.join('');
}

// What one compressible message cost on a leg's wire, against its payload size.
function judgeLeg(leg, compressed, bytes, payload, what) {
  if (compressed) {
    check(bytes < payload / 4, `${what}: the ${leg} leg should be compressed, but ${bytes} ` +
                               `bytes carried a ${payload}-byte message`);
  } else {
    check(bytes >= payload, `${what}: the ${leg} leg should be uncompressed, but only ${bytes} ` +
                            `bytes carried a ${payload}-byte message`);
  }
}

async function scenario(gw, ups, s) {
  const url = `ws://${gw.addr}${s.path}`;
  log(`${s.path}: client ${s.clientDeflate ? 'offers' : 'does not offer'} permessage-deflate`);
  const c = await openClient(url, s.clientDeflate);
  const up = ups[s.upstream];
  const session = await pollUntil(() => up.sessions.find((x) => x.path === s.path), WAIT_MS,
                                  `${s.path} at the ${s.upstream} upstream`);

  // Negotiation, per leg.
  check(/permessage-deflate/.test(c.answered) === s.expect.client,
        `${s.path}: the client's 101 answered Sec-WebSocket-Extensions "${c.answered}"`);
  check((c.ws.extensions.includes('permessage-deflate')) === s.expect.client,
        `${s.path}: client agreed "${c.ws.extensions}"`);
  check(/permessage-deflate/.test(session.offered) === s.expect.offered,
        `${s.path}: the upstream was offered "${session.offered}"`);
  // (node's ws reports a string, py_echo.py a list of names)
  const agreed = session.agreed.includes('permessage-deflate');
  check(agreed === s.expect.upstream, `${s.path}: the upstream agreed ${JSON.stringify(session.agreed)}`);

  for (const [name, pieces, binary, compressible] of MESSAGES) {
    const sent = whole(pieces, binary);
    const size = Buffer.byteLength(sent);
    const out0 = c.socket.bytesWritten, in0 = c.socket.bytesRead;
    const upIn0 = session.socket ? session.socket.bytesRead : 0;
    for (let i = 0; i < pieces.length; i++) {
      await sendAsync(c.ws, pieces[i], { binary, fin: i === pieces.length - 1 });
    }
    const got = await c.recv();
    check(got.isBinary === binary, `${s.path} ${name}: echoed as ${got.isBinary ? 'binary' : 'text'}`);
    const data = binary ? got.data : got.data.toString('utf8');
    check(binary ? Buffer.compare(data, sent) === 0 : data === sent,
          `${s.path} ${name}: echo differs (${Buffer.byteLength(data)} bytes, sent ${size})`);
    if (compressible) {
      judgeLeg('client', s.expect.client, c.socket.bytesWritten - out0, size, `${s.path} ${name} (sent)`);
      judgeLeg('client', s.expect.client, c.socket.bytesRead - in0, size, `${s.path} ${name} (echo)`);
      if (session.socket) {
        judgeLeg('upstream', s.expect.upstream, session.socket.bytesRead - upIn0, size,
                 `${s.path} ${name} (at the upstream)`);
      }
    }
  }

  const closed = withTimeout(new Promise((resolve) => c.ws.once('close', (code) => resolve(code))),
                             WAIT_MS, `${s.path}: close handshake`);
  c.ws.close(1000, 'done');
  const code = await closed;
  check(code === 1000, `${s.path}: close code ${code}, want 1000`);
  log(`${s.path}: ${MESSAGES.length} messages intact; client leg ` +
      `${s.expect.client ? 'compressed' : 'plain'}, upstream leg ${s.expect.upstream ? 'compressed' : 'plain'}`);
}

const SCENARIOS = [
  { path: '/both/node/deflating-client', upstream: 'node', clientDeflate: true,
    expect: { client: true, offered: true, upstream: true } },
  { path: '/both/node/plain-client', upstream: 'node', clientDeflate: false,
    expect: { client: false, offered: true, upstream: true } },
  { path: '/both/py/deflating-client', upstream: 'py', clientDeflate: true,
    expect: { client: true, offered: true, upstream: false } },
  { path: '/client/node/deflating-client', upstream: 'node', clientDeflate: true,
    expect: { client: true, offered: false, upstream: false } },
  { path: '/client/py/deflating-client', upstream: 'py', clientDeflate: true,
    expect: { client: true, offered: false, upstream: false } },
];

async function main() {
  check(fs.existsSync(UPGATE), `no upgate binary at ${UPGATE} (set UPGATE_BIN)`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'upgate-interop-'));
  let nodeUp = null, py = null, gw = null;
  try {
    nodeUp = await startNodeUpstream();
    py = await startPythonUpstream(work);
    gw = await startUpgate(work, nodeUp.port, py.port);
    log(`node ws upstream :${nodeUp.port}, python upstream :${py.port}, upgate ${gw.addr}`);
    const ups = { node: nodeUp, py };
    for (const s of SCENARIOS) await scenario(gw, ups, s);

    gw.proc.kill('SIGTERM');
    const code = await withTimeout(gw.exited, WAIT_MS, 'upgate exit after SIGTERM');
    check(code === 0, `upgate exited with ${code} after SIGTERM (want 0)`);
    log('upgate stopped on SIGTERM with exit 0');
  } catch (e) {
    if (gw && fs.existsSync(gw.stderrPath)) {
      const lines = fs.readFileSync(gw.stderrPath, 'utf8').split('\n').slice(-40).join('\n');
      console.error('---- upgate stderr (last 40 lines) ----\n' + lines);
    }
    throw e;
  } finally {
    if (gw && gw.exit === null) gw.proc.kill('SIGKILL');
    if (py && py.proc.exitCode === null) py.proc.kill('SIGTERM');
    if (nodeUp) {
      for (const client of nodeUp.server.clients) client.terminate();
      nodeUp.server.close();
    }
    fs.rmSync(work, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  console.error(`[interop] FAIL: not done within ${TOTAL_MS / 1000}s`);
  process.exit(1);
}, TOTAL_MS);

main().then(() => {
  clearTimeout(watchdog);
  log('PASS');
  process.exit(0);
}, (e) => {
  console.error('[interop] FAIL: ' + (e instanceof Failure ? e.message : e.stack));
  process.exit(1);
});
