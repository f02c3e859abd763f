// permessage-deflate in a real browser (issue 12 §5): headless Debian Chromium opens a
// WebSocket to the real server, which must negotiate the extension (ws.extensions),
// deliver compressed pushes of large JSON payloads intact, and understand the
// browser's own compressed messages (Chromium compresses what it sends). Started by
// tests/browser.rs with:
//   node compression.mjs WS_ADDR CONTROL_ADDR
// Prints one JSON line (last) and exits 0, or explains on stderr and exits 1.
// Never lets Playwright fetch a browser: it only runs /usr/bin/chromium.
import net from 'node:net';
import { launchChromium, resp } from './common.mjs';

const [wsAddr, control] = process.argv.slice(2);
if (!wsAddr || !control) {
  console.error('usage: node compression.mjs WS_ADDR CONTROL_ADDR');
  process.exit(2);
}
const [chost, cport] = control.split(':');
const ROOM = 'z';

let browser = null;
async function fail(msg) {
  console.error(`compression e2e: ${msg}`);
  try { await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 3000))]); } catch { /* exiting anyway */ }
  process.exit(1);
}
setTimeout(() => fail('did not finish within 60 s'), 60000).unref();

// Realistic JSON pushes: a 1 KB one (the benchmark's size) and a 64 KB one.
const payload = (n, tag) => {
  const items = [];
  let s = '';
  for (let i = 0; s.length < n; i++) {
    items.push({ id: i, tag, symbol: `SYM${i}`, price: 100 + i * 0.25, volume: 1000 + i * 31, venue: 'XNYS' });
    s = JSON.stringify({ type: 'quotes', items });
  }
  return s;
};
const messages = [payload(1000, 'a'), payload(64000, 'b'), payload(5000, 'c')];

const ctl = net.connect(Number(cport), chost);
ctl.on('error', (e) => fail(`control port: ${e.message}`));
const replies = [];
ctl.on('data', (b) => {
  for (const l of b.toString().split('\r\n')) if (l) replies.push(l);
});
const publish = (text) => {
  const parts = ['PUBLISH', ROOM, text];
  ctl.write(resp(parts));
};

browser = await launchChromium(fail);
const page = await browser.newPage();
// A page of the server itself: Chromium blocks loopback WebSockets from about:blank
// (local network access checks).
await page.goto(`http://${wsAddr}/healthz`);
const opened = await page.evaluate((url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  window.got = [];
  window.ws = ws;
  ws.onmessage = (e) => window.got.push(e.data);
  ws.onopen = () => {
    // A request the browser compresses (it is well over any threshold).
    ws.send(JSON.stringify({ op: 'join', room: 'second', pad: 'p'.repeat(3000) }));
    resolve({ open: true, extensions: ws.extensions });
  };
  ws.onerror = () => resolve({ open: false });
}), `ws://${wsAddr}/ws?rooms=${ROOM}`);
if (!opened.open) await fail('the WebSocket did not open');
try {
  await page.waitForFunction(() => window.got.length >= 1, null, { timeout: 10000, polling: 20 });
} catch {
  await fail('no reply to the compressed join');
}
for (const m of messages) publish(m);
try {
  await page.waitForFunction((n) => window.got.length >= n, messages.length + 1, { timeout: 20000, polling: 20 });
} catch {
  await fail(`pushes did not arrive (${await page.evaluate(() => window.got.length)} messages)`);
}
const got = await page.evaluate(() => window.got);
const intact = messages.every((m, i) => got[i + 1] === m);
await browser.close();
ctl.end();
console.log(JSON.stringify({
  extensions: opened.extensions,
  joined: got[0],
  intact,
  bytes: messages.reduce((a, m) => a + m.length, 0),
  replies,
}));
process.exit(0);
