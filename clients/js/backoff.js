// Reconnect delays: exponential back-off with FULL jitter, so that thousands of
// clients dropped by the same restart spread their reconnects over the whole window
// instead of arriving in waves. Pure: no timers, no I/O; must never return a delay
// outside [0, maxDelay) nor grow without bound.

// 2^40 · any sane minDelay is far past any maxDelay; capping the exponent keeps the
// arithmetic finite however long a client keeps failing.
const MAX_EXPONENT = 40;

/**
 * Delay before reconnect attempt `attempt` (0 for the first retry):
 * uniform in [0, min(maxDelay, minDelay · 2^attempt)).
 */
export function fullJitter(attempt, minDelay, maxDelay, random = Math.random) {
  const exponent = Math.min(Math.max(0, Math.floor(attempt)), MAX_EXPONENT);
  const ceiling = Math.min(maxDelay, minDelay * 2 ** exponent);
  const r = random();
  // A broken random source must not produce a negative or over-long delay.
  const unit = r >= 0 && r < 1 ? r : 0;
  return Math.floor(unit * ceiling);
}

/** Checks back-off options; throws RangeError with the option's name. */
export function checkDelays(minDelay, maxDelay) {
  if (!Number.isFinite(minDelay) || minDelay < 0) {
    throw new RangeError(`minDelay must be a finite number >= 0, got ${minDelay}`);
  }
  if (!Number.isFinite(maxDelay) || maxDelay < minDelay) {
    throw new RangeError(`maxDelay must be a finite number >= minDelay, got ${maxDelay}`);
  }
}

/** Counts failed attempts; `next()` gives the next delay, `reset()` starts over. */
export class Backoff {
  constructor({ minDelay = 1000, maxDelay = 30000, random = Math.random } = {}) {
    checkDelays(minDelay, maxDelay);
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.random = random;
    this.attempt = 0;
  }

  next() {
    const delay = fullJitter(this.attempt, this.minDelay, this.maxDelay, this.random);
    if (this.attempt < MAX_EXPONENT) this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}
