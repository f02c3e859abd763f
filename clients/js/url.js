// Builds the connect URL: the base URL plus `token=`, `rooms=` and `recover=`. Pure.
// It must never emit a room name or token unencoded (names may hold `:`, `&`, `%`,
// `#`…), nor encode the separators the server splits on (`,` between entries, `:`
// inside a recover entry), nor keep a fragment (WebSocket URLs have none).

const OWN_PARAMS = new Set(['token', 'rooms', 'recover']);

/** Room names as the server accepts them: 1–128 bytes of printable ASCII, no space or comma. */
export function isValidRoom(name) {
  if (typeof name !== 'string' || name.length < 1 || name.length > 128) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

/** The names of query parameters of `base` that the client sets itself. */
export function ownParamsIn(base) {
  const query = splitUrl(base).query;
  if (query === '') return [];
  return query
    .split('&')
    .map((pair) => pair.split('=')[0])
    .filter((key) => OWN_PARAMS.has(key));
}

function splitUrl(base) {
  const hash = base.indexOf('#');
  const noFragment = hash === -1 ? base : base.slice(0, hash);
  const q = noFragment.indexOf('?');
  return q === -1
    ? { path: noFragment, query: '' }
    : { path: noFragment.slice(0, q), query: noFragment.slice(q + 1) };
}

/**
 * `base` with `token`, `rooms` (array of names) and `recover` (array of
 * `{room, epoch, offset}`) appended; other parameters of `base` are kept as written,
 * and any `token`/`rooms`/`recover` already in it are replaced. Empty lists are left out.
 */
export function buildUrl(base, { token, rooms = [], recover = [] } = {}) {
  const { path, query } = splitUrl(base);
  const params = query === '' ? [] : query.split('&').filter((pair) => pair !== '');
  const kept = params.filter((pair) => !OWN_PARAMS.has(pair.split('=')[0]));
  if (token !== undefined && token !== null && token !== '') {
    kept.push(`token=${encodeURIComponent(token)}`);
  }
  if (rooms.length > 0) {
    kept.push(`rooms=${rooms.map(encodeURIComponent).join(',')}`);
  }
  if (recover.length > 0) {
    const entries = recover.map(
      ({ room, epoch, offset }) =>
        `${encodeURIComponent(room)}:${encodeURIComponent(epoch)}:${offset}`,
    );
    kept.push(`recover=${entries.join(',')}`);
  }
  return kept.length === 0 ? path : `${path}?${kept.join('&')}`;
}
