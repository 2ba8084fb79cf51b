#!/usr/bin/env node
// Browser test for the stock-ticker demo: Debian's Chromium, driven by playwright-core, opens the
// page of docker/demo/ticker_app.py and checks what a user would see. Plain node, no framework;
// run.sh starts the app and upgate and calls this script.
//
//   node ticker.test.js --url http://127.0.0.1:PORT/ [--expect connected|closed]
//                       [--screenshot FILE] [--min-updates 3] [--timeout 30]
//
// --expect connected (the default; the page loaded THROUGH upgate): within --timeout seconds the
// page's WebSocket (/ticker, served by upgate's longpoll bridge) is "connected" and has delivered
// at least --min-updates price updates; a BUY click then gets the app's order reply
// ({"ok":true,"order":N,...}) back over the same socket.
// --expect closed (the page loaded from the app directly, which serves no WebSocket): the
// state turns "closed", no update arrives and the "works only through upgate" note shows.
// Either way a screenshot is saved (default ./ticker.png) and what was seen is printed.
// Exit 0 = pass, 1 = fail. Every wait is bounded.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch (e) {
  console.error('[browser] FAIL: cannot load playwright-core (run.sh installs it with npm ci and ' +
                'sets NODE_PATH): ' + e.message);
  process.exit(1);
}

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
// Headless and root-safe, and no background traffic: the test machines reach only Debian and npm,
// and without the background-networking flags Chromium keeps trying hosts it cannot reach.
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function parseArgs(argv) {
  const opts = { url: null, expect: 'connected', screenshot: path.resolve('ticker.png'),
                 minUpdates: 3, timeout: 30 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i], val = argv[i + 1];
    const need = () => { if (val === undefined) usage('missing value for ' + key); i++; return val; };
    switch (key) {
      case '--url': opts.url = need(); break;
      case '--expect': opts.expect = need(); break;
      case '--screenshot': opts.screenshot = path.resolve(need()); break;
      case '--min-updates': opts.minUpdates = Number(need()); break;
      case '--timeout': opts.timeout = Number(need()); break;
      default: usage('unknown argument ' + key);
    }
  }
  if (!opts.url) usage('--url is required');
  if (!['connected', 'closed'].includes(opts.expect)) usage('--expect: connected or closed');
  if (!(opts.minUpdates >= 1) || !(opts.timeout > 0 && opts.timeout <= 30)) {
    usage('--min-updates >= 1, 0 < --timeout <= 30');
  }
  return opts;
}

function usage(msg) {
  console.error('[browser] ' + msg + '\nusage: node ticker.test.js --url URL ' +
                '[--expect connected|closed] [--screenshot FILE] [--min-updates N] [--timeout S]');
  process.exit(2);
}

const t0 = Date.now();
const log = (msg) => console.log(`[browser +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);

class Failure extends Error {}

// What the page shows: read straight from the DOM.
async function snapshot(page) {
  return page.evaluate(() => {
    const text = (id) => { const el = document.getElementById(id); return el ? el.textContent : null; };
    const note = document.getElementById('note');
    return {
      title: document.title,
      state: text('state'),
      updates: text('updates'),
      reply: text('reply'),
      noteVisible: !!note && getComputedStyle(note).display !== 'none',
      rows: Array.from(document.querySelectorAll('#quotes tr')).map((tr) =>
        Array.from(tr.querySelectorAll('td')).map((td) => td.textContent.trim())
          .filter((s) => s !== '').join(' ')),
    };
  });
}

function describe(s) {
  return `state=${JSON.stringify(s.state)} updates=${JSON.stringify(s.updates)} ` +
         `reply=${JSON.stringify(s.reply)} note=${s.noteVisible ? 'shown' : 'hidden'}\n` +
         s.rows.map((r) => '    ' + r).join('\n');
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const deadline = t0 + opts.timeout * 1000;
  const left = () => Math.max(1, deadline - Date.now());

  if (!fs.existsSync(CHROMIUM)) throw new Failure(`${CHROMIUM} not found (apt-get install chromium)`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'upgate-chromium-'));
  const events = { console: [], pageErrors: [], sockets: [] };
  let context = null, page = null, passed = false;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS,
      viewport: { width: 900, height: 560 }, timeout: 60000,
    });
    log(`chromium started (${CHROMIUM}, fresh profile ${profile})`);
    page = context.pages()[0] || await context.newPage();
    page.on('console', (m) => events.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => events.pageErrors.push(String(e)));
    page.on('websocket', (ws) => {
      const rec = { url: ws.url(), received: 0, sent: 0, closed: false, error: null, first: null };
      events.sockets.push(rec);
      log(`page opened WebSocket ${ws.url()}`);
      ws.on('framereceived', (f) => { rec.received++; if (rec.first === null) rec.first = String(f.payload); });
      ws.on('framesent', () => { rec.sent++; });
      ws.on('socketerror', (e) => { rec.error = String(e); });
      ws.on('close', () => { rec.closed = true; });
    });

    const resp = await page.goto(opts.url, { waitUntil: 'load', timeout: left() });
    if (!resp) throw new Failure(`no response for ${opts.url}`);
    log(`GET ${opts.url} -> ${resp.status()} ${resp.headers()['content-type'] || ''}`);
    if (resp.status() !== 200) throw new Failure(`the page answered ${resp.status()}, not 200`);
    const title = await page.title();
    if (title !== 'upgate stock ticker') throw new Failure(`page title is ${JSON.stringify(title)}`);

    let seen;
    if (opts.expect === 'connected') {
      try {
        await page.waitForFunction((min) =>
          document.getElementById('state').textContent === 'connected' &&
          Number(document.getElementById('updates').textContent) >= min,
        opts.minUpdates, { timeout: left(), polling: 100 });
      } catch (e) {
        throw new Failure(`within ${opts.timeout}s the page did not show "connected" with at least ` +
                          `${opts.minUpdates} updates; it shows ${describe(await snapshot(page))}`);
      }
      seen = await snapshot(page);
      log(`connected, ${seen.updates} price updates so far`);
      const ticker = events.sockets.find((s) => new URL(s.url).pathname === '/ticker');
      if (!ticker) throw new Failure('the updates did not come over a /ticker WebSocket');
      if (ticker.received < opts.minUpdates) {
        throw new Failure(`only ${ticker.received} WebSocket frames arrived on ${ticker.url}`);
      }
      const priced = seen.rows.filter((r) => /\d+\.\d\d/.test(r)).length;
      if (priced === 0) throw new Failure(`no price is shown:\n${seen.rows.join('\n')}`);

      // BUY: the message goes out on the WebSocket, upgate POSTs it to the app's /send, and the
      // app's answer comes back on the same socket.
      const button = page.locator('button.buy').first();
      const symbol = await button.getAttribute('data-symbol');
      await button.click({ timeout: left() });
      log(`clicked BUY ${symbol}`);
      let reply;
      try {
        const handle = await page.waitForFunction(() => {
          const t = document.getElementById('reply').textContent;
          return t.startsWith('{') ? t : false;
        }, null, { timeout: left(), polling: 100 });
        reply = await handle.jsonValue();
      } catch (e) {
        throw new Failure(`no order reply within ${opts.timeout}s; the page shows ` +
                          describe(await snapshot(page)));
      }
      let order;
      try { order = JSON.parse(reply); } catch (e) { throw new Failure(`the reply is not JSON: ${reply}`); }
      if (order.ok !== true || !Number.isInteger(order.order) || order.symbol !== symbol) {
        throw new Failure(`unexpected order reply for ${symbol}: ${reply}`);
      }
      log(`order reply: ${reply}`);
      seen = await snapshot(page);
    } else {
      try {
        await page.waitForFunction(() => document.getElementById('state').textContent === 'closed',
                                   null, { timeout: left(), polling: 100 });
      } catch (e) {
        throw new Failure(`the page never showed "closed": ${describe(await snapshot(page))}`);
      }
      seen = await snapshot(page);
      if (seen.updates !== '0') throw new Failure(`updates arrived without upgate: ${seen.updates}`);
      if (!seen.noteVisible) throw new Failure('the "works only through upgate" note is not shown');
      log('closed, as expected without upgate; the note is shown');
    }

    await page.screenshot({ path: opts.screenshot, fullPage: true, timeout: 15000 });
    log(`screenshot: ${opts.screenshot}`);
    console.log(`[browser] page: ${describe(seen)}`);
    if (events.pageErrors.length) throw new Failure('page errors: ' + events.pageErrors.join('; '));
    passed = true;
    console.log(`[browser] PASS (${opts.expect}) in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  } finally {
    if (!passed && page) {  // the failure, as the user would see it
      await page.screenshot({ path: opts.screenshot, fullPage: true, timeout: 15000 })
        .then(() => console.log(`[browser] screenshot of the failure: ${opts.screenshot}`), () => {});
    }
    for (const s of events.sockets) {
      console.log(`[browser] websocket ${s.url}: ${s.received} frames in, ${s.sent} out` +
                  `${s.closed ? ', closed' : ''}${s.error ? ', error ' + s.error : ''}` +
                  `${s.first ? ', first: ' + s.first : ''}`);
    }
    if (events.console.length) console.log('[browser] console:\n  ' + events.console.join('\n  '));
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

// A hard stop in case the browser itself hangs (launch, close): well past every bounded wait.
const watchdog = setTimeout(() => {
  console.error('[browser] FAIL: watchdog: still running after 120s');
  process.exit(1);
}, 120000);

main().then(() => { clearTimeout(watchdog); process.exit(0); }, (e) => {
  console.error('[browser] FAIL: ' + (e instanceof Failure ? e.message : (e && e.stack) || e));
  process.exit(1);
});
