// wspush browser/Node client: one WebSocket to the gateway in subprotocol wspush.v1,
// kept open across failures (reconnect with full-jitter back-off), with the rooms it
// joined re-joined and recovered (`rooms=`, `recover=room:epoch:offset`) and its token
// refreshed before expiry. It must never hand the application a room message twice
// or out of order (duplicates after a recovery are dropped by offset), never
// reconnect after a kick (4000) or `close()`, and never let an event handler's
// exception corrupt its own state. No dependencies: it runs where a WebSocket class
// exists (browsers; Node ≥ 22, or any `ws`-compatible class given as an option).

import { Backoff, checkDelays } from './backoff.js';
import { DUPLICATE, GAP, NEW_EPOCH, Positions } from './positions.js';
import { buildUrl, isValidRoom, ownParamsIn } from './url.js';
import { MAX_TIMER, base64Decode, refreshDelay, tokenExpiry, tokenRooms } from './jwt.js';

export const SUBPROTOCOL = 'wspush.v1';

// Close codes of the contract (README "Close codes", issue 10).
const CLOSE_KICKED = 4000;
const CLOSE_TOKEN_EXPIRED = 4001;

const EVENTS = ['message', 'state', 'joined', 'left', 'error'];

// A second try covers a refresh refused as "too soon"; a third refusal would make the
// server close with 1008, so the client stops after two and lets expiry (4001, then a
// reconnect with a fresh token) take over.
const REFRESH_TRIES = 2;
const REFRESH_RETRY_MS = 2000;

/** An error reported through the `error` event. */
export class WspushError extends Error {
  constructor(kind, message, { room, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'WspushError';
    this.kind = kind;
    if (room !== undefined) this.room = room;
  }
}

export class WspushClient {
  #url;
  #WebSocket;
  #getToken;
  #token;
  #stableAfter;
  #timers;
  #backoff;
  #listeners = new Map(EVENTS.map((e) => [e, new Set()]));
  // Rooms the application asked for (constructor `rooms`, `join()`), in join order.
  #rooms = new Set();
  #positions = new Positions();
  #state = 'disconnected';
  #stopped = true;
  #ws = null;
  // Rooms named in the current socket's URL: joins/leaves made after it was built are
  // sent as ops once it opens.
  #urlRooms = new Set();
  // Rooms of the URL that the application left while the socket was connecting:
  // their leave is sent once it opens.
  #pendingLeaves = new Set();
  // Leaves sent and not yet answered, per room: a `left` reply to our own leave must
  // not undo a join made right after it; any other `left` (grants lost at refresh)
  // removes the room.
  #leavesInFlight = new Map();
  #openedAt = null;
  // Bumped by every connect attempt and stop, so async work (getToken) of an older
  // attempt can tell it is stale.
  #generation = 0;
  #reconnectTimer = null;
  #refreshTimer = null;
  #refreshTries = 0;
  #pendingToken = null;
  #refreshedExp = null;

  /**
   * @param {string} url ws:// or wss:// URL of the gateway's path (may carry other
   *   parameters such as `user=` in development mode, but not token/rooms/recover).
   * @param {object} [options] see wspush.d.ts.
   */
  constructor(url, options = {}) {
    if (typeof url !== 'string') throw new TypeError('url must be a string');
    const own = ownParamsIn(url);
    if (own.length > 0) {
      throw new TypeError(`pass ${own.join(', ')} as options, not in the URL`);
    }
    const {
      token,
      getToken,
      rooms = [],
      minDelay = 1000,
      maxDelay = 30000,
      stableAfter = 10000,
      WebSocket: WebSocketClass = globalThis.WebSocket,
      random = Math.random,
      timers = {},
      autoConnect = true,
    } = options;
    if (typeof WebSocketClass !== 'function') {
      throw new TypeError('no WebSocket class: pass one as the WebSocket option');
    }
    if (getToken !== undefined && typeof getToken !== 'function') {
      throw new TypeError('getToken must be a function returning a token or a promise of one');
    }
    if (token !== undefined && typeof token !== 'string') {
      throw new TypeError('token must be a string');
    }
    checkDelays(minDelay, maxDelay);
    if (!Number.isFinite(stableAfter) || stableAfter < 0) {
      throw new RangeError(`stableAfter must be a finite number >= 0, got ${stableAfter}`);
    }
    for (const room of rooms) this.#checkRoom(room);
    this.#url = url;
    this.#WebSocket = WebSocketClass;
    this.#getToken = getToken;
    this.#token = token;
    this.#stableAfter = stableAfter;
    this.#timers = {
      setTimeout: timers.setTimeout ?? ((fn, ms) => setTimeout(fn, ms)),
      clearTimeout: timers.clearTimeout ?? ((id) => clearTimeout(id)),
      now: timers.now ?? (() => Date.now()),
    };
    this.#backoff = new Backoff({ minDelay, maxDelay, random });
    for (const room of rooms) this.#rooms.add(room);
    if (autoConnect) {
      // A microtask later, so handlers attached right after `new` see `connecting`.
      this.#stopped = false;
      queueMicrotask(() => {
        if (!this.#stopped && this.#generation === 0) this.#connect();
      });
    }
  }

  /** `connecting`, `connected` or `disconnected`. */
  get state() {
    return this.#state;
  }

  /** Rooms the client keeps joined (its own joins, not the token's). */
  get rooms() {
    return [...this.#rooms];
  }

  /** Last `{epoch, offset}` seen in `room`, or undefined. */
  position(room) {
    return this.#positions.get(room);
  }

  on(name, fn) {
    this.#handlers(name).add(fn);
    return this;
  }

  off(name, fn) {
    this.#handlers(name).delete(fn);
    return this;
  }

  /**
   * Starts (or, after `close()` or a kick, restarts) connecting, keeping rooms and
   * positions. Does nothing while already connecting or connected.
   */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#backoff.reset();
    this.#connect();
  }

  /** Joins `room` now if connected, else at the next connect; kept across reconnects. */
  join(room) {
    this.#checkRoom(room);
    if (this.#rooms.has(room)) return;
    this.#rooms.add(room);
    this.#pendingLeaves.delete(room);
    if (this.#isOpen()) this.#sendJoin(room);
  }

  /** Leaves `room` (now if connected) and forgets its position. */
  leave(room) {
    this.#checkRoom(room);
    this.#rooms.delete(room);
    this.#positions.delete(room);
    if (this.#isOpen()) {
      this.#sendLeave(room);
    } else if (this.#ws !== null && this.#urlRooms.has(room)) {
      this.#pendingLeaves.add(room);
    }
  }

  /**
   * Drops the current connection as a network failure would (the demo's button):
   * the client reconnects with back-off and recovers its rooms. No-op when not
   * connected.
   */
  drop() {
    const ws = this.#ws;
    if (ws === null || this.#stopped) return;
    this.#detach(ws, 1000, 'dropped by the client');
    this.#scheduleReconnect({ code: 1006, reason: 'dropped' });
  }

  /** Closes the connection for good (until `connect()`); no reconnect. */
  close() {
    this.#stop(1000, 'closed by the client');
  }

  // ---- connection lifecycle ------------------------------------------------------

  async #connect() {
    const generation = ++this.#generation;
    this.#clearReconnect();
    this.#setState('connecting');
    let token = this.#token;
    if (this.#getToken !== undefined) {
      try {
        token = await this.#getToken();
      } catch (cause) {
        if (generation !== this.#generation) return;
        this.#emitError(new WspushError('token', 'getToken failed', { cause }));
        this.#scheduleReconnect({ code: null, reason: 'getToken failed' });
        return;
      }
      if (generation !== this.#generation) return;
      if (typeof token !== 'string' || token === '') {
        this.#emitError(new WspushError('token', 'getToken did not return a token string'));
        this.#scheduleReconnect({ code: null, reason: 'no token' });
        return;
      }
      this.#token = token;
    }
    const rooms = this.#connectRooms(token);
    const recover = [];
    for (const room of rooms) {
      const p = this.#positions.get(room);
      if (p !== undefined) recover.push({ room, epoch: p.epoch, offset: p.offset });
    }
    const url = buildUrl(this.#url, { token, rooms, recover });
    let ws;
    try {
      ws = new this.#WebSocket(url, [SUBPROTOCOL]);
    } catch (cause) {
      // A URL the WebSocket class refuses will be refused again: stop.
      this.#emitError(new WspushError('socket', `cannot open ${this.#url}`, { cause }));
      this.#stop(null, 'invalid URL');
      return;
    }
    this.#ws = ws;
    this.#urlRooms = new Set(rooms);
    this.#pendingLeaves.clear();
    this.#leavesInFlight.clear();
    this.#openedAt = null;
    this.#refreshTries = 0;
    this.#refreshedExp = null;
    try {
      ws.binaryType = 'arraybuffer';
    } catch {
      // Some implementations have no binaryType; the protocol sends text only.
    }
    ws.onopen = () => this.#ws === ws && this.#onOpen(ws, token);
    ws.onmessage = (ev) => this.#ws === ws && this.#onMessage(ev);
    ws.onerror = () =>
      this.#ws === ws && this.#emitError(new WspushError('socket', 'WebSocket error'));
    ws.onclose = (ev) => this.#ws === ws && this.#onClose(ev);
  }

  // The rooms the URL names: the client's own, plus the token's `rooms` for which a
  // position is known (the server joins those anyway, but recovering them requires
  // listing them in `rooms=` too, and the token grants them).
  #connectRooms(token) {
    const rooms = [...this.#rooms];
    for (const room of tokenRooms(token)) {
      if (!this.#rooms.has(room) && this.#positions.has(room) && isValidRoom(room)) rooms.push(room);
    }
    return rooms;
  }

  #onOpen(ws, token) {
    if (ws.protocol !== SUBPROTOCOL) {
      // The server speaks raw mode (no envelope, no offsets): duplicates could not be
      // told apart. A newer node may answer next time, so this counts as a failure.
      this.#emitError(
        new WspushError('protocol', `server did not accept subprotocol ${SUBPROTOCOL}`),
      );
      this.#detach(ws, 1000, 'wspush.v1 required');
      this.#scheduleReconnect({ code: null, reason: 'subprotocol refused' });
      return;
    }
    this.#openedAt = this.#timers.now();
    this.#setState('connected');
    if (!this.#isOpen()) return; // a handler closed the client
    for (const room of this.#rooms) {
      if (!this.#urlRooms.has(room)) this.#sendJoin(room);
    }
    for (const room of this.#pendingLeaves) this.#sendLeave(room);
    this.#pendingLeaves.clear();
    this.#refreshedExp = tokenExpiry(token);
    this.#scheduleRefresh(this.#refreshedExp);
  }

  #onClose(ev) {
    const code = typeof ev?.code === 'number' ? ev.code : 1006;
    const reason = typeof ev?.reason === 'string' ? ev.reason : '';
    const stable =
      this.#openedAt !== null && this.#timers.now() - this.#openedAt >= this.#stableAfter;
    this.#detach(this.#ws, null);
    if (stable) this.#backoff.reset();
    if (code === CLOSE_KICKED) {
      this.#stop(null, reason === '' ? 'kicked' : reason, code);
      return;
    }
    if (code === CLOSE_TOKEN_EXPIRED && this.#getToken === undefined) {
      // The same token would be refused again.
      this.#stop(null, reason === '' ? 'token expired' : reason, code);
      return;
    }
    this.#scheduleReconnect({ code, reason });
  }

  #scheduleReconnect(closeInfo) {
    if (this.#stopped) return;
    const delay = this.#backoff.next();
    this.#setState('disconnected', {
      code: closeInfo?.code ?? null,
      reason: closeInfo?.reason ?? '',
      reconnect: true,
      delay,
    });
    if (this.#stopped) return; // a state handler called close()
    this.#clearReconnect();
    this.#reconnectTimer = this.#timers.setTimeout(() => {
      this.#reconnectTimer = null;
      if (!this.#stopped) this.#connect();
    }, delay);
  }

  #stop(closeCode, reason, code = null) {
    const wasStopped = this.#stopped && this.#state === 'disconnected';
    this.#stopped = true;
    this.#generation += 1;
    this.#clearReconnect();
    this.#detach(this.#ws, closeCode, reason);
    if (!wasStopped) {
      this.#setState('disconnected', { code, reason, reconnect: false });
    }
  }

  // Forgets a socket (its late events are ignored) and closes it if asked.
  #detach(ws, closeCode, reason) {
    if (ws === null) return;
    if (this.#ws === ws) this.#ws = null;
    this.#openedAt = null;
    this.#clearRefresh();
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (closeCode !== null) {
      try {
        ws.close(closeCode, reason);
      } catch {
        // Already closing or closed.
      }
    }
  }

  // ---- server messages -----------------------------------------------------------

  #onMessage(ev) {
    if (typeof ev.data !== 'string') {
      this.#emitError(new WspushError('protocol', 'binary frame in wspush.v1'));
      return;
    }
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      this.#emitError(new WspushError('protocol', 'server message is not JSON'));
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      this.#emitError(new WspushError('protocol', 'server message is not a JSON object'));
      return;
    }
    if (typeof msg.op === 'string') {
      this.#onOp(msg);
      return;
    }
    const data = this.#payload(msg);
    if (data === undefined) return;
    if (typeof msg.room === 'string') {
      this.#onRoomPush(msg, data);
    } else if (typeof msg.user === 'string') {
      this.#emit('message', { user: msg.user, data });
    } else if (msg.broadcast === true) {
      this.#emit('message', { broadcast: true, data });
    } else {
      this.#emitError(new WspushError('protocol', 'server message of unknown shape'));
    }
  }

  #payload(msg) {
    if (typeof msg.data === 'string') return msg.data;
    if (typeof msg.data_b64 === 'string') {
      const bytes = base64Decode(msg.data_b64);
      if (bytes !== null) return bytes;
      this.#emitError(new WspushError('protocol', 'bad data_b64', { room: msg.room }));
      return undefined;
    }
    this.#emitError(new WspushError('protocol', 'server message without data', { room: msg.room }));
    return undefined;
  }

  #onRoomPush(msg, data) {
    const { room, epoch, offset } = msg;
    if (typeof epoch !== 'string' || !Number.isSafeInteger(offset) || offset < 1) {
      this.#emitError(new WspushError('protocol', 'room message without a valid position', { room }));
      return;
    }
    const verdict = this.#positions.accept(room, epoch, offset);
    if (verdict === DUPLICATE) return;
    if (verdict === GAP || verdict === NEW_EPOCH) {
      // Messages were lost (or the room's history reset) without a join telling us:
      // the application must refetch, as after a failed recovery.
      this.#emit('joined', { room, recovered: false, epoch, offset: offset - 1 });
    }
    this.#emit('message', { room, epoch, offset, data });
  }

  #onOp(msg) {
    switch (msg.op) {
      case 'joined': {
        const { room, epoch, offset } = msg;
        if (typeof room !== 'string' || typeof epoch !== 'string' || !Number.isSafeInteger(offset) || offset < 0) {
          this.#emitError(new WspushError('protocol', 'joined without a valid position', { room }));
          return;
        }
        const recovered = this.#positions.joined(room, epoch, offset, msg.recovered);
        this.#emit('joined', { room, recovered, epoch, offset });
        return;
      }
      case 'left': {
        const room = msg.room;
        if (typeof room !== 'string') return;
        const inFlight = this.#leavesInFlight.get(room) ?? 0;
        if (inFlight > 1) this.#leavesInFlight.set(room, inFlight - 1);
        else this.#leavesInFlight.delete(room);
        if (inFlight === 0) {
          this.#rooms.delete(room);
          this.#positions.delete(room);
        }
        this.#urlRooms.delete(room);
        this.#emit('left', { room });
        return;
      }
      case 'refreshed':
        this.#onRefreshed(msg.exp);
        return;
      case 'pong':
        return;
      case 'error':
        this.#onServerError(msg);
        return;
      default:
        this.#emitError(new WspushError('protocol', `unknown op ${JSON.stringify(msg.op)}`));
    }
  }

  #onServerError(msg) {
    const reason = typeof msg.reason === 'string' ? msg.reason : 'error';
    const room = typeof msg.room === 'string' ? msg.room : undefined;
    if (room !== undefined && reason === 'forbidden') {
      // Asking again at every reconnect would make the handshake fail (403).
      const inFlight = this.#leavesInFlight.get(room) ?? 0;
      if (inFlight > 1) this.#leavesInFlight.set(room, inFlight - 1);
      else this.#leavesInFlight.delete(room);
      this.#rooms.delete(room);
      this.#urlRooms.delete(room);
      this.#positions.delete(room);
    }
    if (reason.startsWith('refresh refused')) {
      this.#pendingToken = null;
      if (this.#refreshTries < REFRESH_TRIES) {
        this.#clearRefresh();
        this.#refreshTimer = this.#timers.setTimeout(() => this.#refresh(), REFRESH_RETRY_MS);
      }
      this.#emitError(new WspushError('token', reason));
      return;
    }
    this.#emitError(new WspushError('server', reason, { room }));
  }

  // ---- token refresh -------------------------------------------------------------

  #scheduleRefresh(exp) {
    this.#clearRefresh();
    if (exp === null || this.#getToken === undefined || !this.#isOpen()) return;
    const delay = refreshDelay(exp, this.#timers.now());
    this.#refreshTimer = this.#timers.setTimeout(() => {
      this.#refreshTimer = null;
      if (delay === MAX_TIMER) this.#scheduleRefresh(exp);
      else this.#refresh();
    }, delay);
  }

  async #refresh() {
    this.#clearRefresh();
    const ws = this.#ws;
    if (!this.#isOpen()) return;
    this.#refreshTries += 1;
    let token;
    try {
      token = await this.#getToken();
    } catch (cause) {
      if (this.#ws === ws) this.#emitError(new WspushError('token', 'getToken failed', { cause }));
      return;
    }
    if (this.#ws !== ws || !this.#isOpen()) return;
    if (typeof token !== 'string' || token === '') {
      this.#emitError(new WspushError('token', 'getToken did not return a token string'));
      return;
    }
    this.#pendingToken = token;
    this.#send({ op: 'refresh', token });
  }

  #onRefreshed(exp) {
    const token = this.#pendingToken;
    this.#pendingToken = null;
    if (token !== null) this.#token = token;
    this.#refreshTries = 0;
    const newExp = Number.isFinite(exp) ? exp : tokenExpiry(token);
    if (newExp === null || newExp === undefined) return;
    if (this.#refreshedExp !== null && newExp <= this.#refreshedExp) {
      // Refreshing again would not extend the connection: let it expire (4001) and
      // reconnect with whatever getToken gives then.
      this.#emitError(new WspushError('token', 'getToken returned a token that does not extend the connection'));
      return;
    }
    this.#refreshedExp = newExp;
    this.#scheduleRefresh(newExp);
  }

  // ---- helpers -------------------------------------------------------------------

  #isOpen() {
    return this.#ws !== null && this.#openedAt !== null;
  }

  #sendJoin(room) {
    const p = this.#positions.get(room);
    this.#send(p === undefined ? { op: 'join', room } : { op: 'join', room, since: p });
  }

  #sendLeave(room) {
    this.#leavesInFlight.set(room, (this.#leavesInFlight.get(room) ?? 0) + 1);
    this.#urlRooms.delete(room);
    this.#send({ op: 'leave', room });
  }

  #send(obj) {
    try {
      this.#ws.send(JSON.stringify(obj));
    } catch (cause) {
      this.#emitError(new WspushError('socket', 'send failed', { cause }));
    }
  }

  #clearReconnect() {
    if (this.#reconnectTimer !== null) {
      this.#timers.clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = null;
    }
  }

  #clearRefresh() {
    if (this.#refreshTimer !== null) {
      this.#timers.clearTimeout(this.#refreshTimer);
      this.#refreshTimer = null;
    }
  }

  #checkRoom(room) {
    if (!isValidRoom(room)) {
      throw new TypeError(
        `invalid room name ${JSON.stringify(room)} (1-128 printable ASCII characters, no space or comma)`,
      );
    }
  }

  #handlers(name) {
    const set = this.#listeners.get(name);
    if (set === undefined) throw new TypeError(`unknown event ${JSON.stringify(name)}`);
    return set;
  }

  #setState(state, info = {}) {
    if (this.#state === state && state !== 'disconnected') return;
    this.#state = state;
    this.#emit('state', state, info);
  }

  #emitError(err) {
    this.#emit('error', err);
  }

  #emit(name, ...args) {
    for (const fn of [...this.#listeners.get(name)]) {
      try {
        fn(...args);
      } catch (e) {
        // The application's bug surfaces (window.onerror, uncaughtException) without
        // unwinding through the client's bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

export default WspushClient;
