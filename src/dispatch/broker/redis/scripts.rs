//! The Lua scripts that keep room positions and history in Redis (cluster mode with
//! `--history-size`), so every node and every recovery sees the same offsets.
//!
//! Per room, on the room channel's instance: a hash `P:pos:<room>` (`e` = epoch,
//! `o` = last offset) and a stream `P:hist:<room>` whose entry ids are `<offset>-1`
//! (so a recovery reads "everything after offset N" with one XRANGE). Both expire
//! `--history-ttl` after the room's last publish; a room whose hash is gone starts a
//! new epoch (the candidate the node passes) and drops any stream left behind. Each
//! script runs atomically: the position, the history entry and the PUBLISH of the
//! message with its position happen as one step, in Redis's one order.

/// KEYS: pos hash, stream, channel. ARGV: message prefix (the wire envelope up to the
/// body), payload, history size, TTL in ms, epoch candidate. Publishes
/// `prefix .. epoch .. ":" .. offset .. ":" .. payload`; returns `{epoch, offset,
/// receivers}`.
pub const PUBLISH: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, o .. '-1', 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local n = redis.call('PUBLISH', KEYS[3], ARGV[1] .. e .. ':' .. o .. ':' .. ARGV[2])
return {e, o, n}
"#;

/// KEYS: pos hash, stream. ARGV: epoch seen ('' for none), offset seen, most to
/// replay, epoch candidate, TTL in ms. Returns `{epoch, offset, recovered (0/1),
/// payload…}`: the payloads of offsets `seen+1 ..= offset` when recovered.
pub const RECOVER: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local o = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
if ARGV[1] == '' or ARGV[1] ~= e then return {e, o, 0} end
local since = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
if since > o then return {e, o, 0} end
if since == o then return {e, o, 1} end
if o - since > max then return {e, o, 0} end
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-1', '+', 'COUNT', o - since)
if #entries ~= o - since or entries[1][1] ~= (since + 1) .. '-1' then return {e, o, 0} end
local out = {e, o, 1}
for _, en in ipairs(entries) do out[#out + 1] = en[2][2] end
return out
"#;

/// KEYS: pos hash, stream. ARGV: how many of the newest (0: all), the last id (`+`, or
/// `(O-1` for the entries below offset O), the most payload bytes to return (the newest
/// that fit, always at least one, so a reply is bounded in Redis, before it is sent).
/// Returns `{epoch ('' if none), offset, id, payload, id, payload…}`, oldest first.
pub const HISTORY: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return {'', 0} end
local o = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local n = tonumber(ARGV[1])
local last = ARGV[2]
local budget = tonumber(ARGV[3])
local entries
if n > 0 then
  entries = redis.call('XREVRANGE', KEYS[2], last, '-', 'COUNT', n)
else
  entries = redis.call('XREVRANGE', KEYS[2], last, '-')
end
local keep, bytes = 0, 0
for i = 1, #entries do
  bytes = bytes + #entries[i][2][2]
  if i > 1 and bytes > budget then break end
  keep = i
end
local out = {e, o}
for i = keep, 1, -1 do
  out[#out + 1] = entries[i][1]
  out[#out + 1] = entries[i][2][2]
end
return out
"#;
