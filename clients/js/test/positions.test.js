// Position tracking: in-order delivery, duplicate dropping, gaps, epochs, joins.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DELIVER, DUPLICATE, FIRST, GAP, NEW_EPOCH, Positions } from '../positions.js';

test('the first message of a room is delivered and recorded', () => {
  const p = new Positions();
  assert.equal(p.accept('news', 'e1', 5), FIRST);
  assert.deepEqual(p.get('news'), { epoch: 'e1', offset: 5 });
});

test('in-order messages are delivered; not-greater offsets are duplicates', () => {
  const p = new Positions();
  p.set('news', 'e1', 3);
  assert.equal(p.accept('news', 'e1', 4), DELIVER);
  assert.equal(p.accept('news', 'e1', 4), DUPLICATE);
  assert.equal(p.accept('news', 'e1', 2), DUPLICATE);
  assert.equal(p.accept('news', 'e1', 5), DELIVER);
  assert.deepEqual(p.get('news'), { epoch: 'e1', offset: 5 });
});

test('a recovery replay overlapping live messages yields each offset once', () => {
  const p = new Positions();
  p.set('news', 'e1', 10);
  assert.equal(p.joined('news', 'e1', 13, true), true);
  // replay 11..13, then live 12..14 (overlap)
  const delivered = [11, 12, 13, 12, 13, 14].filter((o) => p.accept('news', 'e1', o) !== DUPLICATE);
  assert.deepEqual(delivered, [11, 12, 13, 14]);
});

test('skipped offsets are a gap; another epoch restarts the room', () => {
  const p = new Positions();
  p.set('news', 'e1', 3);
  assert.equal(p.accept('news', 'e1', 6), GAP);
  assert.deepEqual(p.get('news'), { epoch: 'e1', offset: 6 });
  assert.equal(p.accept('news', 'e2', 1), NEW_EPOCH);
  assert.deepEqual(p.get('news'), { epoch: 'e2', offset: 1 });
  assert.equal(p.accept('news', 'e2', 1), DUPLICATE);
});

test('rooms are tracked independently', () => {
  const p = new Positions();
  p.accept('a', 'e', 1);
  assert.equal(p.accept('b', 'e', 1), FIRST);
  assert.equal(p.accept('a', 'e', 1), DUPLICATE);
  assert.deepEqual(p.rooms().sort(), ['a', 'b']);
});

test('joined without recovery moves to the server position', () => {
  const p = new Positions();
  assert.equal(p.joined('news', 'e1', 7, undefined), false);
  assert.deepEqual(p.get('news'), { epoch: 'e1', offset: 7 });
  assert.equal(p.accept('news', 'e1', 7), DUPLICATE);
  assert.equal(p.accept('news', 'e1', 8), DELIVER);
  // recovery failed: the current position replaces ours
  assert.equal(p.joined('news', 'e2', 40, false), false);
  assert.deepEqual(p.get('news'), { epoch: 'e2', offset: 40 });
});

test('joined at exactly our position keeps continuity without recovery', () => {
  const p = new Positions();
  p.set('news', 'e1', 8);
  assert.equal(p.joined('news', 'e1', 8, undefined), true);
  assert.equal(p.joined('news', 'e1', 9, undefined), false);
});

test('recovered join keeps our offset so the replay is delivered', () => {
  const p = new Positions();
  p.set('news', 'e1', 2);
  assert.equal(p.joined('news', 'e1', 5, true), true);
  assert.deepEqual(p.get('news'), { epoch: 'e1', offset: 2 });
  assert.equal(p.accept('news', 'e1', 3), DELIVER);
});

test('delete forgets a room', () => {
  const p = new Positions();
  p.set('news', 'e1', 2);
  p.delete('news');
  assert.equal(p.get('news'), undefined);
  assert.equal(p.accept('news', 'e1', 2), FIRST);
});
