// ioredis and node-redis at their default settings against the wspush control port.
// Usage: node node_clients.mjs HOST PORT [PASSWORD]. Prints one JSON object per
// library; tests/redis_clients.rs checks it and what the WebSocket clients received.
import Redis from 'ioredis';
import { createClient } from 'redis';

const [host, portText, password] = process.argv.slice(2);
const port = Number(portText);
const result = {};
setTimeout(() => { console.error('node_clients: no result within 20 s'); process.exit(1); }, 20000).unref();

async function errorOf(fn) {
  try { await fn(); return null; } catch (e) { return `${e.constructor.name}: ${e.message}`; }
}

// ioredis (its ready check sends INFO on connect).
{
  const r = new Redis({ host, port, password, lazyConnect: false, maxRetriesPerRequest: 1 });
  const out = {};
  out.ping = await r.ping();
  out.publish = await r.publish('lib', 'ioredis-1');
  const p = r.pipeline();
  for (let i = 2; i <= 5; i++) p.publish('lib', `ioredis-${i}`);
  out.pipelined = (await p.exec()).map(([err, v]) => (err ? String(err) : v));
  out.send = await r.call('SEND', 'libuser', 'ioredis-send');
  out.info_has_clients = (await r.info()).includes('connected_clients:');
  out.error = await errorOf(() => r.call('PUBLISH', 'only-one-argument'));
  await r.quit();
  if (password !== undefined) {
    const bad = new Redis({ host, port, password: 'wrong', maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
    bad.on('error', () => {});
    out.bad_password = await errorOf(() => bad.connect());
    bad.disconnect();
  }
  result.ioredis = out;
}

// node-redis.
{
  const c = createClient({ socket: { host, port, reconnectStrategy: false }, password });
  c.on('error', () => {});
  await c.connect();
  const out = {};
  out.ping = await c.ping();
  out.publish = await c.publish('lib', 'node-redis-1');
  const m = c.multi();
  for (let i = 2; i <= 5; i++) m.publish('lib', `node-redis-${i}`);
  out.pipelined = await m.execAsPipeline();
  out.send = await c.sendCommand(['SEND', 'libuser', 'node-redis-send']);
  out.info_has_clients = (await c.info()).includes('connected_clients:');
  out.error = await errorOf(() => c.sendCommand(['PUBLISH', 'only-one-argument']));
  await c.quit();
  if (password !== undefined) {
    const bad = createClient({ socket: { host, port, reconnectStrategy: false }, password: 'wrong' });
    bad.on('error', () => {});
    out.bad_password = await errorOf(() => bad.connect());
  }
  result['node-redis'] = out;
}
console.log(JSON.stringify(result));
process.exit(0);
