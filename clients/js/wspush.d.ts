// TypeScript declarations of wspush.js (the wspush.v1 client). Declarations only:
// they must never disagree with what wspush.js does.

export declare const SUBPROTOCOL: 'wspush.v1';

/** Anything constructible like the WHATWG WebSocket (browsers, Node ≥ 22, `ws`). */
export interface WebSocketLike {
  readonly protocol: string;
  binaryType?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
}
export type WebSocketClass = new (url: string, protocols: string[]) => WebSocketLike;

export interface WspushOptions {
  /** A fixed token, sent as `?token=` (no refresh without `getToken`). */
  token?: string;
  /** Called before each connect and before the token expires (read from its `exp`). */
  getToken?: () => string | Promise<string>;
  /** Rooms to join (each must be 1–128 printable ASCII characters, no space or comma). */
  rooms?: string[];
  /** Back-off base in ms (default 1000): retry n waits random(0, min(maxDelay, minDelay·2^n)). */
  minDelay?: number;
  /** Back-off ceiling in ms (default 30000). */
  maxDelay?: number;
  /** A connection up this long (ms, default 10000) resets the back-off. */
  stableAfter?: number;
  /** WebSocket class (default globalThis.WebSocket). */
  WebSocket?: WebSocketClass;
  /** Connect on construction, a microtask later (default true); else call connect(). */
  autoConnect?: boolean;
  /** For tests and simulations: the random source of the jitter. */
  random?: () => number;
  /** For tests and simulations: the clock and timers. */
  timers?: {
    setTimeout?: (fn: () => void, ms: number) => unknown;
    clearTimeout?: (id: unknown) => void;
    now?: () => number;
  };
}

export interface RoomMessage {
  room: string;
  epoch: string;
  offset: number;
  /** The payload: a string, or bytes when the server sent `data_b64`. */
  data: string | Uint8Array;
}
export interface UserMessage {
  user: string;
  data: string | Uint8Array;
}
export interface BroadcastMessage {
  broadcast: true;
  data: string | Uint8Array;
}
export type Message = RoomMessage | UserMessage | BroadcastMessage;

export interface Joined {
  room: string;
  /** false: messages may have been missed (first join, failed recovery, lost offsets): refetch. */
  recovered: boolean;
  epoch: string;
  /** Offset of the last message before those that follow. */
  offset: number;
}

export type State = 'connecting' | 'connected' | 'disconnected';
export interface StateInfo {
  /** Close code, when a close caused the change (null for client-side reasons). */
  code?: number | null;
  reason?: string;
  /** Whether the client will reconnect by itself. */
  reconnect?: boolean;
  /** The back-off delay before that reconnect, in ms. */
  delay?: number;
}

export declare class WspushError extends Error {
  /** server: an `{"op":"error"}` reply; token: getToken or refresh; protocol: a bad server message; socket: the WebSocket. */
  readonly kind: 'server' | 'token' | 'protocol' | 'socket';
  readonly room?: string;
}

export interface WspushEvents {
  message: (msg: Message) => void;
  state: (state: State, info: StateInfo) => void;
  joined: (joined: Joined) => void;
  left: (left: { room: string }) => void;
  error: (err: WspushError) => void;
}

export declare class WspushClient {
  constructor(url: string, options?: WspushOptions);
  readonly state: State;
  /** Rooms the client keeps joined (its own joins). */
  readonly rooms: string[];
  /** Last position seen in a room. */
  position(room: string): { epoch: string; offset: number } | undefined;
  on<K extends keyof WspushEvents>(name: K, fn: WspushEvents[K]): this;
  off<K extends keyof WspushEvents>(name: K, fn: WspushEvents[K]): this;
  /** Starts connecting (again after close() or a kick); a no-op while running. */
  connect(): void;
  join(room: string): void;
  leave(room: string): void;
  /** Drops the current connection as a network failure would; the client reconnects and recovers. */
  drop(): void;
  /** Closes for good (until connect()). */
  close(): void;
}

export default WspushClient;
