// End to end in a real browser: the demo page (`wspush --demo`) in headless Debian
// Chromium, driven by playwright-core, against the real server, while a backend
// publishes and the connection is dropped again and again — by the page's own "Drop
// connection" button (client.drop()) and by cutting the TCP connection under the
// browser (a proxy this script runs in front of the server; the browser sees 1006).
// At the end the page must have seen every message exactly once and in order, and
// every rejoin must have been recovered. Started by tests/browser.rs with:
//   node browser.mjs WS_ADDR CONTROL_ADDR      (both host:port of a server started
//   with --demo --history-size 1000)
// or, for the cluster case (issue 10 §6: the page's node is killed and restarted):
//   node browser.mjs --restart WS_ADDR_OF_B CONTROL_ADDR_OF_A
// where the page is opened on node B itself and the one drop is B's death, which only
// the Rust test can cause; the two talk over stdio, one word a line:
//   stdout "ready" (the page has joined)      -> stdin "go" (B subscribes the room)
//   stdout "kill" (mid-publish)               -> stdin "killed" (B SIGKILLed)
//   stdout "start" (A acked a publish since)  -> stdin "started" (B up, same ports)
// Prints one JSON line (last) and exits 0, or explains on stderr and exits 1.
// Never lets Playwright fetch a browser: it only runs /usr/bin/chromium (Debian's,
// installed by scripts/test.sh).
import net from 'node:net';
import { launchChromium, resp } from './common.mjs';

const argv = process.argv.slice(2);
const RESTART = argv[0] === '--restart';
const [wsAddr, control] = RESTART ? argv.slice(1) : argv;
if (!wsAddr || !control) {
  console.error('usage: node browser.mjs [--restart] WS_ADDR CONTROL_ADDR');
  process.exit(2);
}
const [whost, wport] = wsAddr.split(':');
const [chost, cport] = control.split(':');
const TOTAL = 300;
const ROOM = 'b';
// Alternating button drops and TCP cuts. Each drop waits for the previous rejoin, so
// that every one of them is a real drop of a live connection; the demo's back-off
// (250 ms doubling, full jitter) keeps the whole run within a few seconds.
const DROPS = RESTART ? ['restart'] : ['button', 'cut', 'kick', 'button', 'cut', 'kick'];

let browser = null;
async function fail(msg) {
  console.error(`browser e2e: ${msg}`);
  try { await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 3000))]); } catch { /* exiting anyway */ }
  process.exit(1);
}
setTimeout(() => fail('did not finish within 60 s'), 60000).unref();

// The proxy the page is loaded through, so its WebSocket (to location.host) is too;
// cut() destroys every proxied connection at once, as a network failure would.
const live = new Set();
const proxy = net.createServer((down) => {
  const up = net.connect(Number(wport), whost);
  live.add(down);
  live.add(up);
  const end = () => { down.destroy(); up.destroy(); live.delete(down); live.delete(up); };
  down.on('error', end); up.on('error', end); down.on('close', end); up.on('close', end);
  down.pipe(up); up.pipe(down);
});
await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
const cut = () => { for (const s of live) s.destroy(); live.clear(); };

// The lines the Rust test answers (--restart only); a closed stdin means it is gone.
const answers = [];
let answered = null;
let stdinBuf = '';
if (RESTART) {
  process.stdin.on('data', (b) => {
    stdinBuf += b.toString();
    let i;
    while ((i = stdinBuf.indexOf('\n')) >= 0) {
      answers.push(stdinBuf.slice(0, i).trim());
      stdinBuf = stdinBuf.slice(i + 1);
      answered?.();
    }
  });
  process.stdin.on('end', () => fail('the test closed stdin'));
}
const ask = async (word, expect) => {
  process.stdout.write(`${word}\n`);
  while (answers.length === 0) await new Promise((r) => { answered = r; });
  const got = answers.shift();
  if (got !== expect) await fail(`asked "${word}", the test answered "${got}" instead of "${expect}"`);
};

// A tiny RESP publisher; it counts the integer replies (one per PUBLISH) and keeps
// the errors (a -TRYAGAIN would mean a message delivered nowhere).
const ctl = net.connect(Number(cport), chost);
ctl.on('error', (e) => fail(`control port: ${e.message}`));
let acked = 0;
const errors = [];
ctl.on('data', (b) => {
  for (const l of b.toString().split('\r\n')) {
    if (l.startsWith(':')) acked++;
    else if (l.startsWith('-')) errors.push(l);
  }
});
// A backend KICK of the page's user (its own control connection, so the publisher's
// replies stay publish replies): close 4000; the demo page reconnects after a kick
// (an application's choice: the client itself stays down when kicked).
const kick = () =>
  new Promise((resolve) => {
    const k = net.connect(Number(cport), chost, () => k.end('*3\r\n$4\r\nKICK\r\n$4\r\ndemo\r\n$4\r\ntest\r\n'));
    k.on('data', () => {});
    k.on('close', resolve);
    k.on('error', resolve);
  });
const publish = (text) => {
  const parts = ['PUBLISH', ROOM, text];
  ctl.write(resp(parts));
};

browser = await launchChromium(fail);
const page = await browser.newPage();
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(String(e)));
// --restart: straight to B, whose address must stay the page's after B's restart.
await page.goto(RESTART ? `http://${wsAddr}/?rooms=${ROOM}` : `http://127.0.0.1:${proxy.address().port}/?rooms=${ROOM}&user=demo`);

const joins = () => page.evaluate(() => window.wspushDemo.joins.length);
const waitJoins = async (n, what) => {
  try {
    await page.waitForFunction((k) => window.wspushDemo?.joins.length >= k, n, { timeout: 20000, polling: 20 });
  } catch {
    await fail(`${what}: no join #${n} within 20 s (joins: ${await joins().catch(() => '?')})`);
  }
};
await waitJoins(1, 'first connect');
// A message published before B's subscription to the room is in place would reach
// no one on B (README, Cluster); the test answers once Redis shows it.
if (RESTART) await ask('ready', 'go');

// A steady backend: one message every 15 ms (about 4.5 s), running through the drops.
let sent = 0;
const timer = setInterval(() => {
  if (sent < TOTAL) publish(String(++sent));
  if (sent >= TOTAL) clearInterval(timer);
}, 15);

for (let i = 0; i < DROPS.length; i++) {
  await new Promise((r) => setTimeout(r, 150 + Math.random() * 150));
  if (DROPS[i] === 'button') await page.click('#drop');
  else if (DROPS[i] === 'cut') cut();
  else if (DROPS[i] === 'kick') await kick();
  // Half-way through the messages: B is SIGKILLed, and started again on its ports
  // only once A has taken a message meanwhile, which the rejoin must then replay.
  else {
    while (sent < TOTAL / 2) await new Promise((r) => setTimeout(r, 10));
    await ask('kill', 'killed');
    const ackedAtKill = acked;
    while (acked <= ackedAtKill && sent < TOTAL) await new Promise((r) => setTimeout(r, 5));
    if (acked <= ackedAtKill) await fail('no publish through A was acknowledged while B was down');
    await ask('start', 'started');
  }
  await waitJoins(i + 2, `after drop ${i + 1} (${DROPS[i]})`);
}

// Everything published has been acknowledged by then; the page gets a few seconds
// more for the last pushes (and would get them at once if nothing were missing).
const deadline = Date.now() + 20000;
let allAckedAt = null;
let got = [];
for (;;) {
  got = await page.evaluate((room) => window.wspushDemo.messages.filter((m) => m.room === room).map((m) => m.data), ROOM);
  if (got.length >= TOTAL && acked + errors.length >= TOTAL) break;
  if (acked + errors.length >= TOTAL) allAckedAt ??= Date.now();
  if (Date.now() > deadline || (allAckedAt !== null && Date.now() - allAckedAt > 5000)) break;
  await new Promise((r) => setTimeout(r, 50));
}
const joined = await page.evaluate(() => window.wspushDemo.joins.map((j) => ({ recovered: j.recovered, offset: j.offset })));
const state = await page.textContent('#state');
await browser.close();
ctl.end();
proxy.close();

const nums = got.map(Number);
const inOrder = nums.length === TOTAL && nums.every((v, i) => v === i + 1);
const rejoins = joined.slice(1);
const notRecovered = rejoins.filter((j) => j.recovered !== true).length;
const summary = {
  received: nums.length,
  published: sent,
  acked,
  publish_errors: errors.length,
  drops: DROPS.length,
  joins: joined.length,
  not_recovered: notRecovered,
  state,
  page_errors: pageErrors.length,
  ok: inOrder && notRecovered === 0 && rejoins.length >= DROPS.length && pageErrors.length === 0 && errors.length === 0,
};
console.log(JSON.stringify(summary));
if (errors.length > 0) await fail(`${errors.length} PUBLISH errors, first: ${errors[0]}`);
if (pageErrors.length > 0) await fail(`errors in the page: ${pageErrors.join('; ')}`);
if (!inOrder) {
  const dupes = nums.length - new Set(nums).size;
  const first = nums.findIndex((v, i) => v !== i + 1);
  await fail(`expected 1..${TOTAL} once and in order; got ${nums.length} (${dupes} duplicates), first wrong at index ${first}: ${nums.slice(Math.max(0, first - 3), first + 5)}`);
}
if (notRecovered > 0) await fail(`${notRecovered} of ${rejoins.length} rejoins were not recovered: ${JSON.stringify(rejoins)}`);
if (rejoins.length < DROPS.length) await fail(`${DROPS.length} drops but only ${rejoins.length} rejoins`);
process.exit(0);
