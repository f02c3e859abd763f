// End to end: the real client (Node's WebSocket) against the real wspush server, the
// network between them cut again and again while a backend publishes. Started by
// tests/js_client.rs with: node [--experimental-websocket] recover.mjs WS_URL CONTROL_ADDR
// The client connects through a TCP proxy this script runs; every few hundred ms the
// proxy drops every connection (a train tunnel), the client reconnects with recover=,
// and at the end the application must have seen every published message exactly once
// and in order. Prints one JSON line and exits 0, or explains and exits 1.
import net from 'node:net';
import { WspushClient } from '../wspush.js';

const [wsUrl, control] = process.argv.slice(2);
const target = new URL(wsUrl);
const [chost, cport] = control.split(':');
const TOTAL = 400;
const CUTS = 6;

function fail(msg) {
  console.error(`e2e: ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('did not finish within 60 s'), 60000).unref();

// The proxy: every accepted socket piped to the server; cut() destroys them all.
const live = new Set();
const proxy = net.createServer((down) => {
  const up = net.connect(Number(target.port), target.hostname);
  live.add(down);
  live.add(up);
  const end = () => { down.destroy(); up.destroy(); live.delete(down); live.delete(up); };
  down.on('error', end); up.on('error', end); down.on('close', end); up.on('close', end);
  down.pipe(up); up.pipe(down);
});
await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
const cut = () => { for (const s of live) s.destroy(); live.clear(); };

// A tiny RESP publisher (its replies are counted, not parsed further).
const ctl = net.connect(Number(cport), chost);
let acked = 0;
ctl.on('data', (b) => { acked += b.toString().split('\r\n').filter((l) => l.startsWith(':')).length; });
const publish = (room, text) => {
  const parts = ['PUBLISH', room, text];
  ctl.write(`*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join(''));
};

const url = `ws://127.0.0.1:${proxy.address().port}${target.pathname}${target.search}`;
// The runtime's own WebSocket (Node >= 22, or 20 with --experimental-websocket, as in
// a browser); else the `ws` package (npm ci in this folder).
const WebSocketImpl = globalThis.WebSocket ?? (await import('ws')).WebSocket;
const client = new WspushClient(url, {
  rooms: ['e2e'],
  minDelay: 20,
  maxDelay: 200,
  WebSocket: WebSocketImpl,
});
const got = [];
let joins = 0;
let refetches = 0;
client.on('message', (m) => { if (m.room === 'e2e') got.push(Number(m.data)); });
client.on('joined', (j) => { joins += 1; if (!j.recovered && joins > 1) refetches += 1; });
client.on('error', () => {});

await new Promise((resolve) => client.on('joined', resolve));
let sent = 0;
const timer = setInterval(() => {
  for (let i = 0; i < 5 && sent < TOTAL; i++) publish('e2e', String(++sent));
  if (sent >= TOTAL) clearInterval(timer);
}, 5);
for (let c = 0; c < CUTS; c++) {
  await new Promise((r) => setTimeout(r, 150 + Math.random() * 150));
  cut();
}
const deadline = Date.now() + 30000;
while ((got.length < TOTAL || acked < TOTAL) && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 50));
}
client.close();
ctl.end();
proxy.close();
const want = Array.from({ length: TOTAL }, (_, i) => i + 1);
const ok = got.length === TOTAL && got.every((v, i) => v === want[i]);
console.log(JSON.stringify({ received: got.length, published: sent, acked, joins, refetches, ok }));
if (!ok) fail(`expected 1..${TOTAL} once and in order; got ${got.length}: ${got.slice(0, 20)}…`);
if (refetches > 0) fail(`${refetches} joins were not recovered`);
if (joins < 2) fail('the connection was never cut and recovered');
process.exit(0);
