// JWT payload decoding (base64url), exp, rooms, base64 payloads, refresh timing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_TIMER,
  base64Decode,
  base64UrlDecode,
  decodePayload,
  refreshDelay,
  tokenExpiry,
  tokenRooms,
} from '../jwt.js';

function b64url(text) {
  return Buffer.from(text, 'utf8').toString('base64url');
}
function jwt(payload) {
  return `${b64url('{"alg":"HS256","typ":"JWT"}')}.${b64url(JSON.stringify(payload))}.c2ln`;
}

test('exp is read from the payload', () => {
  assert.equal(tokenExpiry(jwt({ sub: 'alice', exp: 1767225600 })), 1767225600);
});

test('base64url characters - and _ decode (payloads that need them)', () => {
  // "?>" and "~~~" encode to base64 with '/' and '+'; base64url uses '_' and '-'.
  const payload = { sub: '??>>~~~', exp: 42, name: 'Zoë' };
  const token = jwt(payload);
  assert.match(token.split('.')[1], /[-_]/);
  assert.deepEqual(decodePayload(token), payload);
  assert.equal(tokenExpiry(token), 42);
});

test('malformed and opaque tokens have no expiry, without throwing', () => {
  for (const t of [
    undefined,
    '',
    'opaque-token',
    'a.b',
    'a.b.c.d',
    `x.${b64url('not json')}.y`,
    `x.${b64url('[1,2]')}.y`,
    `x.${b64url('{"exp":"soon"}')}.y`,
    `x.${b64url('{"exp":-5}')}.y`,
    'x.a*b.y',
    'x.a.y', // one base64 character is never a whole byte
  ]) {
    assert.equal(tokenExpiry(t), null, String(t));
  }
  assert.equal(tokenExpiry(jwt({ sub: 'a' })), null);
});

test('rooms claim', () => {
  assert.deepEqual(tokenRooms(jwt({ rooms: ['team-7', 3, 'x'] })), ['team-7', 'x']);
  assert.deepEqual(tokenRooms(jwt({ rooms: 'team-7' })), []);
  assert.deepEqual(tokenRooms('opaque'), []);
});

test('base64url with and without padding', () => {
  assert.deepEqual([...base64UrlDecode('AQI')], [1, 2]);
  assert.deepEqual([...base64UrlDecode('AQI=')], [1, 2]);
  assert.deepEqual([...base64UrlDecode('_-8')], [0xff, 0xef]);
  assert.equal(base64UrlDecode('A'), null);
});

test('standard base64 (data_b64) decodes to bytes; malformed is null', () => {
  assert.deepEqual([...base64Decode('/+8A')], [0xff, 0xef, 0x00]);
  assert.deepEqual([...base64Decode('')], []);
  assert.equal(base64Decode('AQI'), null); // padding required
  assert.equal(base64Decode('_-8A'), null); // base64url alphabet is not standard
  assert.equal(base64Decode(5), null);
});

test('refresh a fifth of the lifetime before expiry, 5 s to 60 s ahead', () => {
  const now = 1_000_000_000_000;
  const exp = (ms) => (now + ms) / 1000;
  assert.equal(refreshDelay(exp(600_000), now), 540_000); // 10 min: 60 s ahead
  assert.equal(refreshDelay(exp(100_000), now), 80_000); // 100 s: 20 s ahead
  assert.equal(refreshDelay(exp(10_000), now), 5_000); // 10 s: 5 s ahead
  assert.equal(refreshDelay(exp(3_000), now), 1_000); // nearly expired: the floor
  assert.equal(refreshDelay(exp(-5_000), now), 1_000); // already expired
  assert.equal(refreshDelay(exp(365 * 86_400_000), now), MAX_TIMER);
});
