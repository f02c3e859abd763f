// The client with the runtime's own WebSocket class (Node ≥ 22, or Node 20 with
// --experimental-websocket) against a minimal wspush.v1 server on loopback: checks the
// event wiring, the subprotocol and close codes with a real implementation, not a
// fake. Skipped where the runtime has no WebSocket class.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { WspushClient } from '../wspush.js';

function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len]) : Buffer.from([0x80 | opcode, 126, len >> 8, len & 255]);
  return Buffer.concat([head, payload]);
}

test('real WebSocket: subprotocol, joined, message, kick stops', {
  skip: typeof WebSocket !== 'function' && 'no WebSocket class in this runtime',
  timeout: 20000, // a hang guard, not a timing assertion
}, async () => {
  const seen = [];
  const server = createServer();
  server.on('upgrade', (req, socket) => {
    seen.push({ url: req.url, protocol: req.headers['sec-websocket-protocol'] });
    const accept = createHash('sha1')
      .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
      .digest('base64');
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: wspush.v1\r\n\r\n`,
    );
    const E = '0123456789abcdef';
    socket.write(frame(1, Buffer.from(JSON.stringify({ op: 'joined', room: 'news', epoch: E, offset: 0 }))));
    socket.write(frame(1, Buffer.from(JSON.stringify({ room: 'news', epoch: E, offset: 1, data: 'hello' }))));
    socket.write(frame(1, Buffer.from(JSON.stringify({ room: 'news', epoch: E, offset: 1, data: 'dup' }))));
    const close = Buffer.alloc(2);
    close.writeUInt16BE(4000);
    socket.write(frame(8, Buffer.concat([close, Buffer.from('kicked')])));
    socket.on('data', () => {}); // the client's close reply
    socket.on('error', () => {});
    setTimeout(() => socket.destroy(), 200).unref();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const client = new WspushClient(`ws://127.0.0.1:${port}/ws`, { rooms: ['news'] });
  const messages = [];
  const joined = [];
  client.on('message', (m) => messages.push(m.data));
  client.on('joined', (j) => joined.push(j.recovered));
  const stopped = await new Promise((resolve) => {
    client.on('state', (state, info) => {
      if (state === 'disconnected') resolve(info);
    });
  });
  server.close();
  assert.deepEqual(seen, [{ url: '/ws?rooms=news', protocol: 'wspush.v1' }]);
  assert.deepEqual(joined, [false]);
  assert.deepEqual(messages, ['hello']);
  assert.deepEqual(stopped, { code: 4000, reason: 'kicked', reconnect: false });
});
