// The dashboard (GET / on --http) in headless Debian Chromium, driven by
// playwright-core, while this script runs a load against the real server: WebSocket
// clients (the `ws` package, or Node's own WebSocket) joining rooms, and pushes through
// the HTTP API. Checks that the page loads with no console error, that its charts
// fill while the load runs, and that once the load stops the numbers it shows equal
// what /api/info says. Started by tests/browser.rs with:
//   node dashboard.mjs HTTP_ADDR WS_ADDR SCREENSHOT.png
// Prints one JSON line (last) and exits 0, or explains on stderr and exits 1.
// Never lets Playwright fetch a browser: it only runs /usr/bin/chromium.
import { launchChromium } from './common.mjs';

const [httpAddr, wsAddr, shot] = process.argv.slice(2);
if (!httpAddr || !wsAddr || !shot) {
  console.error('usage: node dashboard.mjs HTTP_ADDR WS_ADDR SCREENSHOT.png');
  process.exit(2);
}
const base = `http://${httpAddr}`;
const WebSocketImpl = globalThis.WebSocket ?? (await import('ws')).default;

let browser = null;
async function fail(msg) {
  console.error(`dashboard e2e: ${msg}`);
  try { await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 3000))]); } catch { /* exiting anyway */ }
  process.exit(1);
}
setTimeout(() => fail('did not finish within 60 s'), 60000).unref();

browser = await launchChromium(fail);
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const consoleErrors = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
page.on('pageerror', (e) => consoleErrors.push(String(e)));
page.on('requestfailed', (r) => consoleErrors.push(`request failed: ${r.url()}`));
await page.goto(base + '/');

const samples = () => page.evaluate(() => Number(document.body.dataset.samples || 0));
async function waitFor(what, f, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  await fail(`timed out waiting for ${what}`);
}
await waitFor('the first refresh', async () => (await samples()) >= 2);

// The load: 60 connections in three rooms (20 more in "hot"), then pushes through the
// HTTP API at about 100 requests/s until the charts have filled.
const sockets = [];
const rooms = ['hot', 'warm', 'cold'];
let received = 0;
for (let i = 0; i < 60; i++) {
  const r = i < 30 ? 'hot' : i < 50 ? 'warm' : 'cold';
  const ws = new WebSocketImpl(`ws://${wsAddr}/ws?user=u${i}&rooms=${r}`);
  ws.onmessage = () => { received++; };
  sockets.push(new Promise((ok, bad) => { ws.onopen = () => ok(ws); ws.onerror = () => bad(new Error('ws error')); }));
}
const open = await Promise.all(sockets).catch((e) => fail(`websocket: ${e.message}`));
const publish = (room) => fetch(base + '/api/publish', {
  method: 'POST', headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ room, data: JSON.stringify({ room, t: Date.now(), pad: 'x'.repeat(200) }) }),
}).then((r) => r.json());
let publishing = true;
let published = 0;
const loop = (async () => {
  while (publishing) {
    await Promise.all(rooms.map(publish));
    published += rooms.length;
    await new Promise((r) => setTimeout(r, 30));
  }
})();

const chartPoints = (id) => page.evaluate((id) => {
  const lines = [...document.querySelectorAll(`#${id} polyline`)];
  return lines.map((l) => Number(l.dataset.points || 0));
}, id);
const maxY = (id) => page.evaluate((id) => {
  // The highest value drawn, read back from the chart's own scale label.
  return document.querySelector(`#${id} text`)?.textContent ?? '';
}, id);
await waitFor('non-empty charts', async () => {
  const [c, d, l] = await Promise.all([chartPoints('chart-connections'), chartPoints('chart-deliveries'), chartPoints('chart-latency')]);
  const deliveriesRate = await page.evaluate(() => document.getElementById('deliveries-rate').textContent);
  return c[0] >= 3 && d[0] >= 3 && l.length === 2 && l[0] >= 2 && Number.parseFloat(deliveriesRate) > 0;
});
const during = {
  connections_chart: await chartPoints('chart-connections'),
  deliveries_chart: await chartPoints('chart-deliveries'),
  latency_chart: await chartPoints('chart-latency'),
  deliveries_scale: await maxY('chart-deliveries'),
  deliveries_rate: await page.evaluate(() => document.getElementById('deliveries-rate').textContent),
  latency_p99: await page.evaluate(() => document.getElementById('latency-p99').textContent),
  // Steady during the load: what the page shows now is what /api/info says now.
  connections_shown: await page.evaluate(() => document.getElementById('connections').textContent),
  connections_api: String((await (await fetch(base + '/api/info?section=clients')).json()).clients.connected_clients),
  rooms_shown: await page.evaluate(() => document.getElementById('rooms-count').textContent),
  rooms_api: String((await (await fetch(base + '/api/info?section=rooms')).json()).rooms.rooms),
};
publishing = false;
await loop;

// Quiet now: after two more refreshes, the page's numbers are /api/info's.
const after = await samples();
await waitFor('two refreshes after the load', async () => (await samples()) >= after + 2);
const info = await (await fetch(base + '/api/info')).json();
const topRooms = await (await fetch(base + '/api/rooms?top=10')).json();
const shown = await page.evaluate(() => ({
  connections: document.getElementById('connections').textContent,
  rooms: document.getElementById('rooms-count').textContent,
  deliveries: document.body.dataset.deliveries,
  roomRows: [...document.querySelectorAll('#rooms-table tbody tr')].map((tr) => [tr.cells[0].textContent, Number(tr.cells[1].textContent)]),
  reactorRows: [...document.querySelectorAll('#reactors-table tbody tr')].map((tr) => Number(tr.cells[1].textContent)),
  status: document.getElementById('status').textContent,
}));
await page.screenshot({ path: shot, fullPage: true });
const mismatches = [];
if (during.connections_shown !== during.connections_api) mismatches.push(`during the load: connections ${during.connections_shown} vs ${during.connections_api}`);
if (during.rooms_shown !== during.rooms_api) mismatches.push(`during the load: rooms ${during.rooms_shown} vs ${during.rooms_api}`);
if (shown.connections !== String(info.clients.connected_clients)) mismatches.push(`connections ${shown.connections} vs ${info.clients.connected_clients}`);
if (shown.rooms !== String(info.rooms.rooms)) mismatches.push(`rooms ${shown.rooms} vs ${info.rooms.rooms}`);
if (shown.deliveries !== String(info.stats.deliveries)) mismatches.push(`deliveries ${shown.deliveries} vs ${info.stats.deliveries}`);
const wantRooms = topRooms.rooms.map((r) => [r.room, r.members]);
if (JSON.stringify(shown.roomRows) !== JSON.stringify(wantRooms)) mismatches.push(`rooms table ${JSON.stringify(shown.roomRows)} vs ${JSON.stringify(wantRooms)}`);
const reactorSum = shown.reactorRows.reduce((a, b) => a + b, 0);
if (reactorSum !== info.clients.connected_clients) mismatches.push(`reactor rows sum ${reactorSum} vs ${info.clients.connected_clients}`);
for (const ws of open) ws.close();
await browser.close();
console.log(JSON.stringify({ ok: mismatches.length === 0 && consoleErrors.length === 0, mismatches, consoleErrors, during, shown, published, received }));
process.exit(0);
