// Connect URL: token, rooms, recover, percent-encoding, kept parameters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildUrl, isValidRoom, ownParamsIn } from '../url.js';

test('no parameters leaves the URL as it is (without fragment)', () => {
  assert.equal(buildUrl('ws://h:8080/ws'), 'ws://h:8080/ws');
  assert.equal(buildUrl('ws://h:8080/ws#x'), 'ws://h:8080/ws');
});

test('rooms and recover are comma-separated, recover as room:epoch:offset', () => {
  const url = buildUrl('ws://h/ws', {
    token: 'a.b.c',
    rooms: ['news', 'sports'],
    recover: [{ room: 'news', epoch: '00ff00ff00ff00ff', offset: 41 }],
  });
  assert.equal(url, 'ws://h/ws?token=a.b.c&rooms=news,sports&recover=news:00ff00ff00ff00ff:41');
});

test('room names and tokens are percent-encoded; separators are not', () => {
  const url = buildUrl('ws://h/ws', {
    token: 'x+y/z=',
    rooms: ['a&b', 'c:d', '100%', 'é#?'],
    recover: [{ room: 'c:d', epoch: 'e', offset: 1 }],
  });
  assert.equal(
    url,
    'ws://h/ws?token=x%2By%2Fz%3D&rooms=a%26b,c%3Ad,100%25,%C3%A9%23%3F&recover=c%3Ad:e:1',
  );
});

test('other parameters are kept; own ones are replaced', () => {
  assert.equal(
    buildUrl('ws://h/ws?user=alice&rooms=old&x=1', { rooms: ['n'] }),
    'ws://h/ws?user=alice&x=1&rooms=n',
  );
  assert.equal(buildUrl('ws://h/ws?user=alice', {}), 'ws://h/ws?user=alice');
  assert.equal(buildUrl('ws://h/ws?', { rooms: ['n'] }), 'ws://h/ws?rooms=n');
});

test('ownParamsIn finds token, rooms and recover only', () => {
  assert.deepEqual(ownParamsIn('ws://h/ws?user=a&token=t&rooms=r'), ['token', 'rooms']);
  assert.deepEqual(ownParamsIn('ws://h/ws'), []);
  assert.deepEqual(ownParamsIn('ws://h/ws?tokens=1'), []);
});

test('room names follow the server rules', () => {
  assert.ok(isValidRoom('news.sports-1:x'));
  assert.ok(isValidRoom('a'.repeat(128)));
  assert.ok(!isValidRoom(''));
  assert.ok(!isValidRoom('a'.repeat(129)));
  assert.ok(!isValidRoom('a b'));
  assert.ok(!isValidRoom('a,b'));
  assert.ok(!isValidRoom('é'));
  assert.ok(!isValidRoom(7));
});
