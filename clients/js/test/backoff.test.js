// Back-off delays: bounds, growth, cap, reset, and that full jitter spreads retries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, fullJitter } from '../backoff.js';

test('the delay is random(0, min(maxDelay, minDelay * 2^attempt))', () => {
  assert.equal(fullJitter(0, 100, 10000, () => 0), 0);
  assert.equal(fullJitter(0, 100, 10000, () => 0.5), 50);
  assert.equal(fullJitter(3, 100, 10000, () => 0.5), 400);
  assert.equal(fullJitter(3, 100, 10000, () => 0.999999), 799);
  // capped by maxDelay
  assert.equal(fullJitter(20, 100, 10000, () => 0.5), 5000);
});

test('delays stay in [0, ceiling) for every attempt, even absurd ones', () => {
  for (const attempt of [0, 1, 5, 30, 1000, 1e9, Infinity]) {
    for (const r of [0, 0.25, 0.999999999]) {
      const d = fullJitter(attempt, 250, 30000, () => r);
      const ceiling = Math.min(30000, 250 * 2 ** Math.min(attempt, 40));
      assert.ok(Number.isInteger(d), `integer delay for attempt ${attempt}`);
      assert.ok(d >= 0 && d < ceiling, `${d} in [0, ${ceiling})`);
    }
  }
});

test('a broken random source cannot produce a negative or over-long delay', () => {
  for (const r of [-1, 1, 2, NaN]) {
    const d = fullJitter(4, 100, 1000, () => r);
    assert.ok(d >= 0 && d < 1000);
  }
});

test('Backoff grows per attempt up to maxDelay and reset starts over', () => {
  const b = new Backoff({ minDelay: 100, maxDelay: 1000, random: () => 0.999 });
  const delays = Array.from({ length: 6 }, () => b.next());
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  b.reset();
  assert.equal(b.next(), 99);
});

test('full jitter spreads many clients over the whole window', () => {
  // A deterministic generator (LCG) stands in for Math.random.
  let seed = 12345;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const ceiling = 8000;
  const buckets = new Array(10).fill(0);
  const n = 10000;
  for (let i = 0; i < n; i++) {
    const d = fullJitter(10, 1000, ceiling, random);
    buckets[Math.floor(d / (ceiling / 10))] += 1;
  }
  // Every tenth of the window gets a fair share: no wave at the start or the end.
  for (const count of buckets) assert.ok(count > n / 10 * 0.8 && count < n / 10 * 1.2, `${buckets}`);
});

test('bad options are refused', () => {
  assert.throws(() => new Backoff({ minDelay: -1 }), RangeError);
  assert.throws(() => new Backoff({ minDelay: 100, maxDelay: 50 }), RangeError);
  assert.throws(() => new Backoff({ minDelay: NaN }), RangeError);
});
