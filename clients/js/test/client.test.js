// The whole client against a scripted fake WebSocket and a manual clock: connect,
// joined, messages, drop and reconnect with recover=, duplicates dropped, kick stops,
// tokens and refresh, joins while disconnected, back-off schedule.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { WspushClient } from '../wspush.js';
import { FakeWebSocket, ManualClock, settle } from './fake.js';

const E1 = '00112233445566aa';
const E2 = 'ffeeddccbbaa9988';

function b64url(text) {
  return Buffer.from(text, 'utf8').toString('base64url');
}
function jwt(payload) {
  return `${b64url('{"alg":"HS256"}')}.${b64url(JSON.stringify(payload))}.sig`;
}

// A client with every event recorded in order.
function start(options = {}, url = 'ws://127.0.0.1:8080/ws') {
  const clock = new ManualClock();
  const client = new WspushClient(url, {
    WebSocket: FakeWebSocket,
    timers: clock,
    random: () => 0.5,
    minDelay: 100,
    maxDelay: 1000,
    ...options,
  });
  const events = [];
  for (const name of ['message', 'state', 'joined', 'left', 'error']) {
    client.on(name, (...args) => events.push([name, ...args]));
  }
  const take = (name) => {
    const got = events.filter((e) => e[0] === name).map((e) => (e.length > 2 ? e.slice(1) : e[1]));
    for (let i = events.length - 1; i >= 0; i--) if (events[i][0] === name) events.splice(i, 1);
    return got;
  };
  return { client, clock, events, take };
}

beforeEach(() => FakeWebSocket.reset());

test('connect, joined, messages, drop, reconnect with recover=, duplicate dropped, kick stops', async () => {
  const { client, clock, take } = start({ rooms: ['news'] });
  await settle();
  assert.equal(FakeWebSocket.instances.length, 1);
  const ws1 = FakeWebSocket.last();
  assert.deepEqual(ws1.protocols, ['wspush.v1']);
  assert.equal(ws1.url, 'ws://127.0.0.1:8080/ws?rooms=news');
  assert.deepEqual(take('state'), [['connecting', {}]]);

  ws1.serverOpen();
  assert.equal(client.state, 'connected');
  assert.deepEqual(ws1.sent, [], 'rooms of the URL are not joined again');
  ws1.serverSend({ op: 'joined', room: 'news', epoch: E1, offset: 0 });
  ws1.serverSend({ room: 'news', epoch: E1, offset: 1, data: 'one' });
  ws1.serverSend({ room: 'news', epoch: E1, offset: 2, data: 'two' });
  ws1.serverSend({ room: 'news', epoch: E1, offset: 2, data: 'two again' });
  assert.deepEqual(take('joined'), [{ room: 'news', recovered: false, epoch: E1, offset: 0 }]);
  assert.deepEqual(take('message'), [
    { room: 'news', epoch: E1, offset: 1, data: 'one' },
    { room: 'news', epoch: E1, offset: 2, data: 'two' },
  ]);

  ws1.serverClose(1006);
  assert.equal(client.state, 'disconnected');
  const states = take('state');
  assert.equal(states.length, 2);
  assert.equal(states[1][0], 'disconnected');
  assert.equal(states[1][1].code, 1006);
  assert.equal(states[1][1].reconnect, true);
  assert.equal(states[1][1].delay, 50, 'random(0, minDelay) on the first retry');
  assert.deepEqual(clock.pending(), [50]);

  clock.advance(50);
  await settle();
  assert.equal(FakeWebSocket.instances.length, 2);
  const ws2 = FakeWebSocket.last();
  assert.equal(ws2.url, `ws://127.0.0.1:8080/ws?rooms=news&recover=news:${E1}:2`);
  ws2.serverOpen();
  ws2.serverSend({ op: 'joined', room: 'news', recovered: true, epoch: E1, offset: 4 });
  // the replay of 3 and 4, then live messages overlapping it
  for (const offset of [3, 4, 2, 4, 5]) {
    ws2.serverSend({ room: 'news', epoch: E1, offset, data: `m${offset}` });
  }
  assert.deepEqual(take('joined'), [{ room: 'news', recovered: true, epoch: E1, offset: 4 }]);
  assert.deepEqual(
    take('message').map((m) => m.offset),
    [3, 4, 5],
    'each offset reaches the application once',
  );
  assert.deepEqual(client.position('news'), { epoch: E1, offset: 5 });

  // users' and broadcast messages carry no position; data_b64 becomes bytes
  ws2.serverSend({ user: 'alice', data: 'hi' });
  ws2.serverSend({ broadcast: true, data: 'all' });
  ws2.serverSend({ room: 'news', epoch: E1, offset: 6, data_b64: '/wA=' });
  const messages = take('message');
  assert.deepEqual(messages.slice(0, 2), [{ user: 'alice', data: 'hi' }, { broadcast: true, data: 'all' }]);
  assert.ok(messages[2].data instanceof Uint8Array);
  assert.deepEqual([...messages[2].data], [0xff, 0x00]);

  take('state');
  ws2.serverClose(4000, 'kicked by admin');
  assert.deepEqual(take('state'), [
    ['disconnected', { code: 4000, reason: 'kicked by admin', reconnect: false }],
  ]);
  assert.deepEqual(clock.pending(), [], 'no reconnect is scheduled after a kick');
  clock.advance(60_000);
  await settle();
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.deepEqual(take('error').filter((e) => e.kind !== 'socket'), []);

  // the application may decide to come back: rooms and positions are kept
  client.connect();
  await settle();
  assert.equal(FakeWebSocket.last().url, `ws://127.0.0.1:8080/ws?rooms=news&recover=news:${E1}:6`);
  client.close();
});

test('a failed recovery is passed to the application and restarts the position', async () => {
  const { client, clock, take } = start({ rooms: ['news'] });
  await settle();
  let ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend({ op: 'joined', room: 'news', epoch: E1, offset: 7 });
  ws.serverClose(1001, 'going away');
  clock.advance(1000);
  await settle();
  ws = FakeWebSocket.last();
  assert.match(ws.url, new RegExp(`recover=news:${E1}:7$`));
  ws.serverOpen();
  take('joined');
  ws.serverSend({ op: 'joined', room: 'news', recovered: false, epoch: E2, offset: 90 });
  ws.serverSend({ room: 'news', epoch: E2, offset: 90, data: 'old' });
  ws.serverSend({ room: 'news', epoch: E2, offset: 91, data: 'new' });
  assert.deepEqual(take('joined'), [{ room: 'news', recovered: false, epoch: E2, offset: 90 }]);
  assert.deepEqual(take('message').map((m) => m.data), ['new']);
  client.close();
});

test('4002 (recovery failed) reconnects and recovers again', async () => {
  const { client, clock } = start({ rooms: ['news'] });
  await settle();
  let ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend({ op: 'joined', room: 'news', epoch: E1, offset: 3 });
  ws.serverClose(4002, 'recovery failed');
  clock.advance(1000);
  await settle();
  ws = FakeWebSocket.last();
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.match(ws.url, new RegExp(`recover=news:${E1}:3$`));
  client.close();
});

test('lost offsets or a new epoch without a join tell the application to refetch', async () => {
  const { client, take } = start({ rooms: ['news'] });
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend({ op: 'joined', room: 'news', epoch: E1, offset: 1 });
  take('joined');
  ws.serverSend({ room: 'news', epoch: E1, offset: 4, data: 'x' });
  assert.deepEqual(take('joined'), [{ room: 'news', recovered: false, epoch: E1, offset: 3 }]);
  ws.serverSend({ room: 'news', epoch: E2, offset: 1, data: 'y' });
  assert.deepEqual(take('joined'), [{ room: 'news', recovered: false, epoch: E2, offset: 0 }]);
  assert.deepEqual(take('message').map((m) => m.data), ['x', 'y']);
  client.close();
});

test('join and leave while disconnected or connecting are applied on connect', async () => {
  const { client, clock } = start({ rooms: ['a', 'b'] });
  await settle();
  let ws = FakeWebSocket.last();
  // still connecting: the URL is built, so these become ops once open
  client.join('c');
  client.leave('b');
  ws.serverOpen();
  assert.deepEqual(ws.sent, [
    { op: 'join', room: 'c' },
    { op: 'leave', room: 'b' },
  ]);
  ws.serverSend({ op: 'joined', room: 'c', epoch: E1, offset: 5 });
  ws.serverSend({ op: 'left', room: 'b' });
  ws.serverClose(1006);
  // disconnected: remembered for the next URL
  client.join('d');
  client.leave('a');
  clock.advance(1000);
  await settle();
  ws = FakeWebSocket.last();
  assert.equal(ws.url, `ws://127.0.0.1:8080/ws?rooms=c,d&recover=c:${E1}:5`);
  ws.serverOpen();
  assert.deepEqual(ws.sent, []);
  // connected: sent at once, with since when the position is known
  client.leave('d');
  client.join('e');
  assert.deepEqual(ws.sent, [
    { op: 'leave', room: 'd' },
    { op: 'join', room: 'e' },
  ]);
  assert.deepEqual(client.rooms, ['c', 'e']);
  client.close();
});

test('a left reply to our own leave does not undo a join right after it', async () => {
  const { client, take } = start({ rooms: ['a'] });
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  client.leave('a');
  client.join('a');
  ws.serverSend({ op: 'left', room: 'a' });
  ws.serverSend({ op: 'joined', room: 'a', epoch: E1, offset: 0 });
  assert.deepEqual(client.rooms, ['a']);
  // a left nobody asked for (grants lost at refresh) removes the room
  ws.serverSend({ op: 'left', room: 'a' });
  assert.deepEqual(client.rooms, []);
  assert.equal(client.position('a'), undefined);
  assert.deepEqual(take('left'), [{ room: 'a' }, { room: 'a' }]);
  client.close();
});

test('a forbidden join is reported and not asked again at reconnect', async () => {
  const { client, clock, take } = start({ rooms: [] });
  await settle();
  let ws = FakeWebSocket.last();
  ws.serverOpen();
  client.join('secret');
  ws.serverSend({ op: 'error', reason: 'forbidden', room: 'secret' });
  const errors = take('error');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].kind, 'server');
  assert.equal(errors[0].room, 'secret');
  ws.serverClose(1006);
  clock.advance(1000);
  await settle();
  ws = FakeWebSocket.last();
  assert.equal(ws.url, 'ws://127.0.0.1:8080/ws');
  client.close();
});

test('getToken before each connect; 4001 gets a new token and reconnects', async () => {
  let n = 0;
  const getToken = async () => jwt({ sub: 'alice', exp: 2_000_000_000, n: ++n });
  const { client, clock } = start({ getToken });
  await settle();
  let ws = FakeWebSocket.last();
  assert.equal(n, 1);
  assert.equal(ws.query().token, jwt({ sub: 'alice', exp: 2_000_000_000, n: 1 }));
  ws.serverOpen();
  ws.serverClose(4001, 'token expired');
  clock.advance(1000);
  await settle();
  assert.equal(n, 2);
  ws = FakeWebSocket.last();
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(ws.query().token, jwt({ sub: 'alice', exp: 2_000_000_000, n: 2 }));
  client.close();
});

test('4001 with a fixed token and no getToken stops (the token would be refused again)', async () => {
  const { clock, take } = start({ token: 'opaque' });
  await settle();
  const ws = FakeWebSocket.last();
  assert.equal(ws.url, 'ws://127.0.0.1:8080/ws?token=opaque');
  ws.serverOpen();
  take('state');
  ws.serverClose(4001, 'token expired');
  assert.deepEqual(take('state'), [
    ['disconnected', { code: 4001, reason: 'token expired', reconnect: false }],
  ]);
  clock.advance(60_000);
  await settle();
  assert.equal(FakeWebSocket.instances.length, 1);
});

test('the token is refreshed before exp, again after each refreshed reply', async () => {
  const clockStart = 1_700_000_000_000;
  let exp = clockStart / 1000 + 600;
  const tokens = [];
  const getToken = async () => {
    const t = jwt({ sub: 'alice', exp });
    tokens.push(t);
    exp += 600;
    return t;
  };
  const { client, clock, take } = start({ getToken });
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  assert.deepEqual(clock.pending(), [540_000], 'a minute before a 10-minute token expires');
  clock.advance(540_000);
  await settle();
  assert.deepEqual(ws.sent, [{ op: 'refresh', token: tokens[1] }]);
  ws.serverSend({ op: 'refreshed', exp: clockStart / 1000 + 1200 });
  assert.deepEqual(clock.pending(), [600_000]);
  clock.advance(600_000);
  await settle();
  assert.deepEqual(ws.sent[1], { op: 'refresh', token: tokens[2] });
  // refused: one retry, then no more (a third refusal would close the connection)
  ws.serverSend({ op: 'error', reason: 'refresh refused: too soon after the last refresh' });
  assert.equal(take('error')[0].kind, 'token');
  clock.advance(2000);
  await settle();
  assert.equal(ws.sent.length, 3);
  ws.serverSend({ op: 'error', reason: 'refresh refused: bad signature' });
  clock.advance(60_000);
  await settle();
  assert.equal(ws.sent.length, 3);
  client.close();
});

test('a refresh that does not extend the token is not repeated', async () => {
  const t = jwt({ sub: 'alice', exp: 1_700_000_000 + 100 });
  const { client, clock, take } = start({ getToken: async () => t });
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  clock.advance(clock.pending()[0]);
  await settle();
  assert.equal(ws.sent.length, 1);
  ws.serverSend({ op: 'refreshed', exp: 1_700_000_000 + 100 });
  assert.equal(take('error').length, 1);
  assert.deepEqual(clock.pending(), []);
  client.close();
});

test('back-off grows to maxDelay and resets after a connection that stayed up', async () => {
  const { client, clock, take } = start({ random: () => 0.999, stableAfter: 5000, rooms: ['r'] });
  await settle();
  const delays = [];
  for (let i = 0; i < 6; i++) {
    FakeWebSocket.last().serverClose(1006);
    delays.push(take('state').at(-1)[1].delay);
    clock.advance(delays.at(-1));
    await settle();
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  // a short-lived connection does not reset the schedule
  FakeWebSocket.last().serverOpen();
  clock.advance(4000);
  FakeWebSocket.last().serverClose(1006);
  assert.equal(take('state').at(-1)[1].delay, 999);
  clock.advance(999);
  await settle();
  // one that stayed up does
  FakeWebSocket.last().serverOpen();
  clock.advance(5000);
  FakeWebSocket.last().serverClose(1006);
  assert.equal(take('state').at(-1)[1].delay, 99);
  client.close();
});

test('a server that refuses the subprotocol is left and retried later', async () => {
  const { client, clock, take } = start();
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen('');
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'wspush.v1 required' });
  assert.equal(take('error')[0].kind, 'protocol');
  assert.equal(client.state, 'disconnected');
  clock.advance(1000);
  await settle();
  assert.equal(FakeWebSocket.instances.length, 2);
  client.close();
});

test('close() stops for good: the socket is closed and nothing reconnects', async () => {
  const { client, clock, take } = start();
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  take('state');
  client.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'closed by the client' });
  assert.deepEqual(take('state'), [
    ['disconnected', { code: null, reason: 'closed by the client', reconnect: false }],
  ]);
  ws.serverClose(1000); // late events of the old socket are ignored
  clock.advance(60_000);
  await settle();
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.deepEqual(take('state'), []);
});

test('bad input is refused clearly', () => {
  const opts = { WebSocket: FakeWebSocket, autoConnect: false };
  assert.throws(() => new WspushClient('ws://h/ws?token=x', opts), /token as options/);
  assert.throws(() => new WspushClient('ws://h/ws', { ...opts, rooms: ['a b'] }), TypeError);
  assert.throws(() => new WspushClient('ws://h/ws', { autoConnect: false, WebSocket: null }), TypeError);
  assert.throws(() => new WspushClient('ws://h/ws', { ...opts, minDelay: -1 }), RangeError);
  const c = new WspushClient('ws://h/ws', opts);
  assert.throws(() => c.join(''), TypeError);
  assert.throws(() => c.on('nope', () => {}), TypeError);
});

test('malformed server messages are reported, not delivered', async () => {
  const { client, take } = start({ rooms: ['news'] });
  await settle();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend('not json');
  ws.serverSend('[1]');
  ws.serverSend({ room: 'news', epoch: E1, offset: 'x', data: 'd' });
  ws.serverSend({ room: 'news', epoch: E1, offset: 1, data_b64: '***' });
  ws.serverSend({ room: 'news', epoch: E1, offset: 1 });
  ws.serverSend({ something: 'else', data: 'd' });
  ws.onmessage({ data: new ArrayBuffer(2) });
  assert.equal(take('error').length, 7);
  assert.deepEqual(take('message'), []);
  client.close();
});
