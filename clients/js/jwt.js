// Reads a JWT's payload (no signature check: the client only needs `exp` and `rooms`
// to schedule refreshes and recoveries; the server verifies) and computes when to
// refresh. Pure. It must never throw on a malformed or opaque token: such a token
// simply has no known expiry.

/** The JSON payload of a JWT (`header.payload.signature`), or null. */
export function decodePayload(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  const bytes = base64UrlDecode(parts[1]);
  if (bytes === null) return null;
  let value;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return null;
  }
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : null;
}

/** The token's `exp` in seconds since the epoch, or null when it has none. */
export function tokenExpiry(token) {
  const payload = decodePayload(token);
  if (payload === null) return null;
  const exp = payload.exp;
  return typeof exp === 'number' && Number.isFinite(exp) && exp >= 0 ? exp : null;
}

/** The token's `rooms` claim (rooms the server joins at connect), valid strings only. */
export function tokenRooms(token) {
  const payload = decodePayload(token);
  if (payload === null || !Array.isArray(payload.rooms)) return [];
  return payload.rooms.filter((r) => typeof r === 'string');
}

/** base64url (RFC 4648 §5, padding optional) to bytes, or null when malformed. */
export function base64UrlDecode(text) {
  if (!/^[A-Za-z0-9_-]*={0,2}$/.test(text)) return null;
  const bare = text.replace(/=+$/, '');
  if (bare.length % 4 === 1) return null;
  const standard = bare.replace(/-/g, '+').replace(/_/g, '/');
  return base64Decode(standard + '='.repeat((4 - (standard.length % 4)) % 4));
}

/** Standard base64 with padding (the envelope's `data_b64`) to bytes, or null. */
export function base64Decode(text) {
  if (typeof text !== 'string' || text.length % 4 !== 0) return null;
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
  let binary;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

// setTimeout fires at once for delays past 2^31-1 ms (~24.8 days); longer waits are
// cut to this and re-evaluated when the timer fires.
export const MAX_TIMER = 2 ** 31 - 1;

/**
 * Milliseconds from `nowMs` until a token expiring at `expSeconds` should be
 * refreshed: a fifth of the remaining lifetime before expiry, at least 5 s and at
 * most 60 s before it, never sooner than `floorMs` (the server verifies at most one
 * refresh per second) and never longer than MAX_TIMER.
 */
export function refreshDelay(expSeconds, nowMs, floorMs = 1000) {
  const remaining = expSeconds * 1000 - nowMs;
  const lead = Math.min(60000, Math.max(5000, remaining / 5));
  const delay = Math.floor(remaining - lead);
  return Math.min(MAX_TIMER, Math.max(floorMs, delay));
}
