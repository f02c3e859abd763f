// Test doubles for the client: a scripted WebSocket class and a manual clock. Never
// opens a socket or waits on real time.

export class FakeWebSocket {
  static instances = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.protocol = '';
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  static last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // ---- the scripted server ----
  serverOpen(protocol = 'wspush.v1') {
    this.protocol = protocol;
    this.readyState = 1;
    this.onopen?.({});
  }

  serverSend(obj) {
    this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
  }

  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  query() {
    return Object.fromEntries(
      new URL(this.url).search
        .slice(1)
        .split('&')
        .filter(Boolean)
        .map((p) => p.split('=')),
    );
  }
}

export class ManualClock {
  constructor(start = 1_700_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.time + ms, fn, ms });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
    this.now = () => this.time;
  }

  /** Delays of the pending timers, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms).sort((a, b) => a - b);
  }

  /** Moves time forward, running each timer that falls due, in order. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let due = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (due === null || t.at < due[1].at)) due = [id, t];
      }
      if (due === null) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].fn();
    }
    this.time = end;
  }
}

/** Lets queued microtasks and promise continuations (getToken) run. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}
