"""The Lua scripts of the Redis Streams backend: every step that must be atomic runs in one.

Redis runs a script without interleaving any other command, so each script below sees and
leaves the queue's keys consistent: a publish to a topic reaches every subscribed queue or
none, a delivery and its lease are written together, a settlement checks that the delivery it
settles still holds the message. The blocking and the asyncio backends run the same scripts;
only the client differs.

Each script takes no ``KEYS`` and reads the key prefix from ``ARGV[1]``: the keys of a queue
follow from its name (see :mod:`melange.backends.redis_streams.topology`). With a prefix
holding a hash tag (``{melange}:``) every key lands in one cluster slot.

The keys of queue ``Q`` (prefix ``P``):

- ``P c:Q``: its settings (hash: ``fifo``, ``vt`` lease in ms, ``mrc`` max receive count,
  ``dlq`` dead-letter queue or empty).
- ``P s:Q``: the stream of its messages, read through the consumer group ``melange``. An
  entry stays until the message is settled (acknowledged or dead-lettered), then is deleted:
  the stream is never trimmed by length, so nothing unsettled is ever dropped.
- ``P l:Q``: the leases (sorted set: entry id -> the time, in ms of the Redis clock, when it
  may be delivered again). A received message gets ``now + vt``; a nack or release gets
  ``now + delay``; a heartbeat pushes it on. A lease that ran out is taken over by the next
  receive with ``XCLAIM``, which counts the delivery in the pending list.
- ``P a:Q``: failed attempts per entry (hash, from ``nack``); ``P w:Q``: entries given back
  with a delay (hash), for the statistics.
- ``P o:<len>:Q:<group>``, ``P p:<len>:Q:<group>``, ``P x:<len>:Q:<group>`` and ``P pg:Q``:
  on a FIFO queue, the messages of each group that are out (delivered, or given back and not
  delivered again yet) and those waiting behind them, in order; those given back that wait
  for an earlier one of the group; and the groups that have any.
- ``P b:Q``: a one-entry stream that rings when a message becomes deliverable other than by
  a publish (a nack, a release, the next message of a FIFO group), to wake waiting receivers.
"""

from __future__ import annotations

import hashlib

#: The consumer group every queue's stream is read through.
GROUP = "melange"

# Helpers every script starts with (those of the rarer paths made on demand).
_COMMON = r"""
local P = ARGV[1]
local GROUP = 'melange'
local REASON = 'melange_failure_reason'
local SOURCE = 'melange_failure_queue'
local function k(kind, name) return P .. kind .. ':' .. name end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The pending-list entry of a message: {id, consumer, idle, deliveries}, or nil.
local function pending(name, id)
  local found = redis.pcall('XPENDING', k('s', name), GROUP, id, id, 1)
  if type(found) ~= 'table' or found.err or not found[1] then return nil end
  return found[1]
end
-- Whether the delivery counted `delivered` still holds the message (not settled, not
-- taken over by another receive since).
local function owned(name, id, delivered)
  local entry = pending(name, id)
  return entry ~= nil and tonumber(entry[4]) == tonumber(delivered)
end
-- The helpers of the rarer paths, made by a script's first call of ``helpers()``: making a
-- closure costs the server time at every run of a script, and the receive and the
-- acknowledgement of a plain queue need none of them.
local parked_key, out_key, blocked_key, id_less, field, ring, ensure_queue, unblock
local advance_group, drop_groups, settle, entry_fields, dead_letter
local made = false
local function helpers()
  if made then return end
  made = true
  function parked_key(name, gid) return P .. 'p:' .. #name .. ':' .. name .. ':' .. gid end
  function out_key(name, gid) return P .. 'o:' .. #name .. ':' .. name .. ':' .. gid end
  function blocked_key(name, gid) return P .. 'x:' .. #name .. ':' .. name .. ':' .. gid end
  -- Stream ids in their order (as strings, '9-0' would come after '10-0').
  function id_less(a, b)
    local am, as = string.match(a, '(%d+)-(%d+)')
    local bm, bs = string.match(b, '(%d+)-(%d+)')
    if am ~= bm then return tonumber(am) < tonumber(bm) end
    return tonumber(as) < tonumber(bs)
  end
  function field(fields, key)
    for i = 1, #fields, 2 do
      if fields[i] == key then return fields[i + 1] end
    end
    return nil
  end
  function ring(name)
    redis.call('XADD', k('b', name), 'MAXLEN', '1', '*', 'r', '1')
  end
  function ensure_queue(name, fifo, vt, mrc)
    if redis.call('EXISTS', k('c', name)) == 0 then
      redis.call('HSET', k('c', name), 'fifo', fifo, 'vt', vt, 'mrc', mrc, 'dlq', '')
      redis.call('SADD', P .. 'queues', name)
    end
    redis.pcall('XGROUP', 'CREATE', k('s', name), GROUP, '0', 'MKSTREAM')
  end
  -- Messages of a FIFO group that came due while an earlier one of the group was out wait
  -- out of the leases; any change to the group makes them due again.
  function unblock(name, gid)
    local blocked = blocked_key(name, gid)
    local ids = redis.call('SMEMBERS', blocked)
    if #ids == 0 then return end
    for _, other in ipairs(ids) do redis.call('ZADD', k('l', name), 0, other) end
    redis.call('DEL', blocked)
    ring(name)
  end
  -- A settled message leaves its FIFO group's messages out; when none is left, the messages
  -- waiting behind them (up to 100 at a time) become deliverable, in order.
  function advance_group(name, id, gid)
    if not gid then return end
    local out = out_key(name, gid)
    redis.call('LREM', out, 1, id)
    unblock(name, gid)
    if redis.call('LLEN', out) > 0 then return end
    local parked = parked_key(name, gid)
    local moved = redis.call('LRANGE', parked, 0, 99)
    if #moved == 0 then
      redis.call('SREM', k('pg', name), gid)
      return
    end
    redis.call('LTRIM', parked, #moved, -1)
    for _, next_id in ipairs(moved) do
      redis.call('ZADD', k('l', name), 0, next_id)
      redis.call('RPUSH', out, next_id)
    end
    ring(name)
  end
  -- Delete the lists of a queue's FIFO groups.
  function drop_groups(name)
    for _, gid in ipairs(redis.call('SMEMBERS', k('pg', name))) do
      redis.call('DEL', parked_key(name, gid), out_key(name, gid), blocked_key(name, gid))
    end
  end
  function settle(name, id, gid)
    local s = k('s', name)
    redis.call('XACK', s, GROUP, id)
    redis.call('XDEL', s, id)
    redis.call('ZREM', k('l', name), id)
    redis.call('HDEL', k('a', name), id)
    redis.call('HDEL', k('w', name), id)
    advance_group(name, id, gid)
  end
  function entry_fields(name, id)
    local found = redis.call('XRANGE', k('s', name), id, id)[1]
    if found then return found[2] end
    return nil
  end
  -- Copy a message to the queue's dead-letter queue with the failure headers (the original
  -- headers win, as the dispatcher's reason was set there first); no deduplication id, so a
  -- second failure of the same message is kept too. Returns 0 when the queue has none.
  function dead_letter(name, fields, extra, reason)
    local cfg = redis.call('HMGET', k('c', name), 'dlq', 'fifo', 'vt', 'mrc')
    local dlq = cfg[1]
    if not dlq or dlq == '' then return 0 end
    if redis.call('EXISTS', k('c', dlq)) == 0 then
      -- Deleted behind our back: recreated rather than the message dropped.
      ensure_queue(dlq, cfg[2], cfg[3], cfg[4])
    end
    local into_fifo = redis.call('HGET', k('c', dlq), 'fifo') == '1'
    local headers = cjson.decode(field(fields, 'h') or '{}')
    for key, value in pairs(extra) do headers[key] = value end
    if headers[REASON] == nil then headers[REASON] = reason end
    if headers[SOURCE] == nil then headers[SOURCE] = name end
    local copy = {}
    for i = 1, #fields, 2 do
      local f = fields[i]
      if f ~= 'h' and f ~= 'd' then
        copy[#copy + 1] = f
        copy[#copy + 1] = fields[i + 1]
      end
    end
    copy[#copy + 1] = 'h'
    copy[#copy + 1] = cjson.encode(headers)
    if into_fifo and not field(fields, 'g') then
      copy[#copy + 1] = 'g'
      copy[#copy + 1] = name
    end
    redis.call('XADD', k('s', dlq), '*', unpack(copy))
    return 1
  end
end
"""

#: ARGV: prefix, queue, consumer, count. Delivers up to ``count`` messages: first those whose
#: lease ran out (dead-lettering those delivered ``max receive count`` times already, when the
#: queue has a dead-letter queue), then new ones. Returns one JSON array (one string is far
#: cheaper for a client to read than nested replies): ``[deliveries, ms until the next lease
#: runs out (-1: none), the stream's last id, the bell's last id, dead-lettered, the lease in
#: ms]``, each delivery ``[entry id, deliveries so far, failed attempts, fields]``; the ids
#: tell a receive with nothing to deliver (now or at its next call) where to wait from. A
#: receive that
#: delivers ``count`` messages is not followed by a wait (messages may be left), so it skips
#: looking them up: its answer says no lease is due and both ids are ``0-0``.
RECEIVE = (
    _COMMON
    + r"""
local name, consumer, count = ARGV[2], ARGV[3], tonumber(ARGV[4])
local cfg = redis.call('HMGET', k('c', name), 'vt', 'mrc', 'dlq', 'fifo')
if not cfg[1] then return redis.error_reply('MELANGE_NO_QUEUE ' .. name) end
local vt, mrc, fifo = tonumber(cfg[1]), tonumber(cfg[2]), cfg[4] == '1'
local has_dlq = cfg[3] and cfg[3] ~= ''
if fifo then helpers() end
local s, leases, attempts, waiting = k('s', name), k('l', name), k('a', name), k('w', name)
local now = now_ms()
local out = {}
local dead = 0
-- The leases of this receive's deliveries (score, id...), written in one ZADD at the end:
-- nothing in between reads them.
local leased = {}
local function deliver(id, delivered, failed, fields)
  leased[#leased + 1] = now + vt
  leased[#leased + 1] = id
  out[#out + 1] = {id, delivered, failed, fields}
end
-- On a FIFO queue, the messages of a group that are out (delivered, or given back and not
-- delivered again yet) are listed in order. A message may be delivered only when every one
-- listed before it is delivered by this same receive. A new message waits in the group's
-- parked list until the group has none out; one given back waits out of the leases until
-- the group changes.
local taken = {}
local function clear_before(gid, id)
  for _, other in ipairs(redis.call('LRANGE', out_key(name, gid), 0, -1)) do
    if other == id then return true end
    if not taken[other] then return false end
  end
  return true
end
-- Leases that ran out: receivers that died or stalled, nacks and releases now due. The
-- earliest lease tells whether any is, and else when the next one runs out.
local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
local first_due = first[2] and tonumber(first[2])
local due = {}
if first_due and first_due <= now then
  helpers()
  due = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, count)
  table.sort(due, id_less)
end
for _, id in ipairs(due) do
  local entry = pending(name, id)
  local fields = entry and entry_fields(name, id)
  if not fields then
    -- Settled or purged meanwhile: only the bookkeeping is left.
    redis.call('ZREM', leases, id)
    redis.call('HDEL', attempts, id)
    redis.call('HDEL', waiting, id)
  else
    local gid = fifo and field(fields, 'g') or nil
    if gid and not clear_before(gid, id) then
      redis.call('ZREM', leases, id)
      redis.call('SADD', blocked_key(name, gid), id)
    else
      local before = tonumber(entry[4])
      if has_dlq and before >= mrc then
        dead_letter(name, fields, {}, 'max receive count exceeded')
        settle(name, id, gid)
        dead = dead + 1
      else
        -- JUSTID does not count a delivery: counted here.
        redis.call('XCLAIM', s, GROUP, consumer, 0, id, 'RETRYCOUNT', before + 1, 'JUSTID')
        redis.call('HDEL', waiting, id)
        taken[id] = true
        deliver(id, before + 1, redis.call('HGET', attempts, id) or '0', fields)
      end
    end
  end
end
-- New messages. A read that comes back short has read to the end of the stream: the id of
-- the last entry it read is then the stream's last.
local rounds, last_read, read_all = 0, nil, false
while #out < count and rounds < 10 do
  rounds = rounds + 1
  local want = count - #out
  local got = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', want, 'STREAMS', s, '>')
  if not got then
    read_all = true
    break
  end
  local entries = got[1][2]
  for _, item in ipairs(entries) do
    local id, fields = item[1], item[2]
    last_read = id
    local gid = fifo and field(fields, 'g') or nil
    if gid then redis.call('SADD', k('pg', name), gid) end
    if gid and (redis.call('LLEN', parked_key(name, gid)) > 0 or not clear_before(gid, nil)) then
      -- Read, not delivered: its delivery count starts again when it is.
      redis.call('RPUSH', parked_key(name, gid), id)
      redis.call('XCLAIM', s, GROUP, consumer, 0, id, 'RETRYCOUNT', 0, 'JUSTID')
    else
      if gid then redis.call('RPUSH', out_key(name, gid), id) end
      taken[id] = true
      -- A new entry was never given back: it has no failed attempts and no delay.
      deliver(id, 1, '0', fields)
    end
  end
  if #entries < want then
    read_all = true
    break
  end
end
for i = 1, #leased, 200 do
  redis.call('ZADD', leases, unpack(leased, i, math.min(i + 199, #leased)))
end
-- The answer, written by hand: cjson would write an empty table as an object.
local encoded = #out > 0 and cjson.encode(out) or '[]'
local function answer(next_due, last, bell)
  return '[' .. encoded .. ',' .. next_due .. ',"' .. last .. '","' .. bell .. '",' .. dead
    .. ',' .. vt .. ']'
end
if #out >= count then return answer(-1, '0-0', '0-0') end
local next_due, last, bell = -1, '0-0', '0-0'
-- Where a receive that finds nothing (now, or next time) waits from, and for how long.
if #due > 0 then
  -- The leases that were due changed: look again.
  first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  first_due = first[2] and tonumber(first[2])
elseif #leased > 0 and not (first_due and first_due < now + vt) then
  first_due = now + vt
end
if first_due then next_due = math.max(first_due - now, 0) end
if read_all and last_read then
  -- Entries past the group's position are only ever deleted with the whole stream (purge),
  -- so the last one read is the last one added.
  last = last_read
else
  local info = redis.call('XINFO', 'STREAM', s)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local rung = redis.call('XREVRANGE', k('b', name), '+', '-', 'COUNT', 1)[1]
if rung then bell = rung[1] end
return answer(next_due, last, bell)
"""
)

#: ARGV: prefix, deduplication window in ms, ``q`` or ``t``, queue or topic name, then the
#: fields of each message one after the other, each message's first its ``i`` field (see
#: :func:`~melange.backends.redis_streams.wire.publish_arguments`). Checks everything first
#: (the destination exists, every message bound for a FIFO queue has a group) and then adds
#: each message to the queue, or to every subscribed queue whose filter accepts its manifest:
#: all of it or nothing. A message whose deduplication id the queue saw within the window is
#: skipped. Returns how many entries were added.
PUBLISH = (
    _COMMON
    + r"""
helpers()
local window, kind, target = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local messages = {}
local fields = nil
for i = 5, #ARGV, 2 do
  if ARGV[i] == 'i' then
    fields = {}
    messages[#messages + 1] = fields
  end
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
local targets = {}
if kind == 'q' then
  if redis.call('EXISTS', k('c', target)) == 0 then
    return redis.error_reply('MELANGE_NO_QUEUE ' .. target)
  end
  targets[1] = {target, false}
else
  if redis.call('SISMEMBER', P .. 'topics', target) == 0 then
    return redis.error_reply('MELANGE_NO_TOPIC ' .. target)
  end
  local subs = redis.call('HGETALL', k('t', target))
  for j = 1, #subs, 2 do
    if redis.call('EXISTS', k('c', subs[j])) == 1 then
      local allowed = false
      if subs[j + 1] ~= '' then
        allowed = {}
        for _, manifest in ipairs(cjson.decode(subs[j + 1])) do allowed[manifest] = true end
      end
      targets[#targets + 1] = {subs[j], allowed}
    end
  end
end
local plan = {}
for _, t in ipairs(targets) do
  local fifo = redis.call('HGET', k('c', t[1]), 'fifo') == '1'
  local selected = {}
  for _, fields in ipairs(messages) do
    local manifest = field(fields, 'm')
    if not t[2] or (manifest and t[2][manifest]) then
      if fifo and not field(fields, 'g') then
        return redis.error_reply('MELANGE_NO_GROUP ' .. t[1])
      end
      selected[#selected + 1] = fields
    end
  end
  plan[#plan + 1] = {t[1], selected}
end
local added = 0
for _, p in ipairs(plan) do
  local s = k('s', p[1])
  for _, fields in ipairs(p[2]) do
    local d = field(fields, 'd')
    local fresh = true
    if d then
      local seen = P .. 'd:' .. #p[1] .. ':' .. p[1] .. ':' .. d
      fresh = redis.call('SET', seen, '1', 'NX', 'PX', window)
    end
    if fresh then
      redis.call('XADD', s, '*', unpack(fields))
      added = added + 1
    end
  end
end
return added
"""
)

#: ARGV: prefix, queue, then the messages' fields as in ``PUBLISH``. The short form of
#: ``PUBLISH`` for messages bound for one queue with no deduplication id: checks the queue
#: exists and, when it is FIFO, that every message has a group, then adds them all. Returns
#: how many entries were added.
PUBLISH_QUEUE = r"""
local P, name = ARGV[1], ARGV[2]
local fifo = redis.call('HGET', P .. 'c:' .. name, 'fifo')
if not fifo then return redis.error_reply('MELANGE_NO_QUEUE ' .. name) end
local starts, grouped = {}, 0
for i = 3, #ARGV, 2 do
  if ARGV[i] == 'i' then
    starts[#starts + 1] = i
  elseif ARGV[i] == 'g' then
    grouped = grouped + 1
  end
end
-- A message has one group field at most: as many as messages means each has one.
if fifo == '1' and grouped < #starts then
  return redis.error_reply('MELANGE_NO_GROUP ' .. name)
end
local s = P .. 's:' .. name
starts[#starts + 1] = #ARGV + 1
for j = 1, #starts - 1 do
  redis.call('XADD', s, '*', unpack(ARGV, starts[j], starts[j + 1] - 1))
end
return #starts - 1
"""

#: ARGV: prefix, queue, the acknowledging backend's consumer name, then pairs of entry id and
#: deliveries. Settles each delivery that still holds its message (a late acknowledgement is a
#: no-op); returns how many.
ACKNOWLEDGE = (
    _COMMON
    + r"""
local name, consumer = ARGV[2], ARGV[3]
local fifo = redis.call('HGET', k('c', name), 'fifo') == '1'
local done = 0
if fifo then
  helpers()
  for i = 4, #ARGV, 2 do
    local id = ARGV[i]
    if owned(name, id, ARGV[i + 1]) then
      local fields = entry_fields(name, id)
      settle(name, id, fields and field(fields, 'g') or nil)
      done = done + 1
    end
  end
  return done
end
local s = k('s', name)
-- The deliveries each entry's pending-list entry counts. A batch acknowledged by the
-- backend that received it is most often that consumer's oldest pending entries: they come
-- in one XPENDING, any other entry is looked up alone.
local held = {}
if #ARGV > 5 then
  local oldest = redis.pcall('XPENDING', s, GROUP, '-', '+', (#ARGV - 3) / 2, consumer)
  if type(oldest) == 'table' and not oldest.err then
    for _, entry in ipairs(oldest) do held[entry[1]] = tonumber(entry[4]) end
  end
end
-- Without FIFO groups, settling is the same few commands for every message: each is sent
-- once for all the messages still held (as ``settle`` does for one).
local ids = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if held[id] == nil then
    local entry = pending(name, id)
    held[id] = entry and tonumber(entry[4]) or false
  end
  if held[id] == tonumber(ARGV[i + 1]) then
    -- Settled once, however often it is listed.
    held[id] = false
    ids[#ids + 1] = id
  end
end
if #ids == 0 then return 0 end
local l, a, w = k('l', name), k('a', name), k('w', name)
-- Failed attempts and delays are rare: their hashes most often do not exist.
local given_back = redis.call('EXISTS', a, w) > 0
for i = 1, #ids, 200 do
  local j = math.min(i + 199, #ids)
  redis.call('XACK', s, GROUP, unpack(ids, i, j))
  redis.call('XDEL', s, unpack(ids, i, j))
  redis.call('ZREM', l, unpack(ids, i, j))
  if given_back then
    redis.call('HDEL', a, unpack(ids, i, j))
    redis.call('HDEL', w, unpack(ids, i, j))
  end
end
return #ids
"""
)

#: ARGV: prefix, queue, entry id, deliveries, delay in ms, ``1`` for a failed attempt (nack)
#: or ``0`` (release). Gives the message back: its lease now ends after the delay. Returns 1,
#: or 0 when the delivery no longer holds it.
GIVE_BACK = (
    _COMMON
    + r"""
helpers()
local name, id, delivered = ARGV[2], ARGV[3], ARGV[4]
local delay, failed = tonumber(ARGV[5]), ARGV[6] == '1'
if not owned(name, id, delivered) then return 0 end
redis.call('ZADD', k('l', name), now_ms() + delay, id)
if failed then redis.call('HINCRBY', k('a', name), id, 1) end
if delay > 0 then
  redis.call('HSET', k('w', name), id, '1')
else
  redis.call('HDEL', k('w', name), id)
end
if redis.call('HGET', k('c', name), 'fifo') == '1' then
  local fields = entry_fields(name, id)
  local gid = fields and field(fields, 'g')
  if gid then unblock(name, gid) end
end
ring(name)
return 1
"""
)

#: ARGV: prefix, queue, entry id, deliveries, ms. Extends the lease to ``now + ms`` while the
#: delivery holds the message. Returns 1, or 0 when it does not.
EXTEND = (
    _COMMON
    + r"""
local name, id = ARGV[2], ARGV[3]
if not owned(name, id, ARGV[4]) then return 0 end
redis.call('ZADD', k('l', name), 'XX', now_ms() + tonumber(ARGV[5]), id)
return 1
"""
)

#: ARGV: prefix, queue, entry id, deliveries, the extra headers as a JSON object, the default
#: reason. Moves the message to the queue's dead-letter queue. Returns 0 when the queue has
#: none (the message stays unsettled), 1 otherwise (also when the delivery lost the message:
#: it comes back and is dead-lettered then).
DEAD_LETTER = (
    _COMMON
    + r"""
helpers()
local name, id, delivered = ARGV[2], ARGV[3], ARGV[4]
local dlq = redis.call('HGET', k('c', name), 'dlq')
if not dlq or dlq == '' then return 0 end
if not owned(name, id, delivered) then return 1 end
local fields = entry_fields(name, id)
if not fields then return 1 end
local extra = cjson.decode(ARGV[5])
dead_letter(name, fields, extra, ARGV[6])
local fifo = redis.call('HGET', k('c', name), 'fifo') == '1'
settle(name, id, fifo and field(fields, 'g') or nil)
return 1
"""
)

#: ARGV: prefix, queue, dead-letter queue (or empty), then for the queue ``fifo``, lease ms,
#: max receive count, whether the lease was given, whether the count was given, then for the
#: dead-letter queue ``fifo``, lease ms and max receive count, then the subscription filter
#: (a JSON list, or empty for every manifest) and the topics to subscribe to. Creates what is
#: missing and updates the options given; the messages stay.
DECLARE_QUEUE = (
    _COMMON
    + r"""
helpers()
local name, dlq = ARGV[2], ARGV[3]
local function upsert(q, fifo, vt, mrc, vt_given, mrc_given)
  if redis.call('EXISTS', k('c', q)) == 0 then
    ensure_queue(q, fifo, vt, mrc)
  else
    if vt_given == '1' then redis.call('HSET', k('c', q), 'vt', vt) end
    if mrc_given == '1' then redis.call('HSET', k('c', q), 'mrc', mrc) end
    redis.pcall('XGROUP', 'CREATE', k('s', q), GROUP, '0', 'MKSTREAM')
  end
end
if dlq ~= '' and dlq ~= name then upsert(dlq, ARGV[9], ARGV[10], ARGV[11], '0', '0') end
upsert(name, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
if dlq ~= '' then redis.call('HSET', k('c', name), 'dlq', dlq) end
local filter = ARGV[12]
for i = 13, #ARGV do
  redis.call('SADD', P .. 'topics', ARGV[i])
  redis.call('HSET', k('t', ARGV[i]), name, filter)
end
return 1
"""
)

#: ARGV: prefix, queue. Deletes the queue, its messages and its subscriptions.
DELETE_QUEUE = (
    _COMMON
    + r"""
helpers()
local name = ARGV[2]
drop_groups(name)
for _, kind in ipairs({'c', 's', 'l', 'a', 'w', 'pg', 'b'}) do
  redis.call('DEL', k(kind, name))
end
redis.call('SREM', P .. 'queues', name)
for _, topic in ipairs(redis.call('SMEMBERS', P .. 'topics')) do
  redis.call('HDEL', k('t', topic), name)
end
return 1
"""
)

#: ARGV: prefix, topic. Deletes the topic and its subscriptions.
DELETE_TOPIC = (
    _COMMON
    + r"""
redis.call('DEL', k('t', ARGV[2]))
redis.call('SREM', P .. 'topics', ARGV[2])
return 1
"""
)

#: ARGV: prefix, queue. Deletes every message of the queue, in flight or not (their
#: settlements become no-ops); returns how many.
PURGE = (
    _COMMON
    + r"""
helpers()
local name = ARGV[2]
if redis.call('EXISTS', k('c', name)) == 0 then
  return redis.error_reply('MELANGE_NO_QUEUE ' .. name)
end
local count = redis.call('XLEN', k('s', name))
drop_groups(name)
for _, kind in ipairs({'s', 'l', 'a', 'w', 'pg'}) do
  redis.call('DEL', k(kind, name))
end
redis.call('XGROUP', 'CREATE', k('s', name), GROUP, '0', 'MKSTREAM')
return count
"""
)

#: ARGV: prefix, queue. Returns ``{ready, in flight, delayed}`` at this moment.
STATS = (
    _COMMON
    + r"""
local name = ARGV[2]
if redis.call('EXISTS', k('c', name)) == 0 then
  return redis.error_reply('MELANGE_NO_QUEUE ' .. name)
end
local now = now_ms()
local total = redis.call('XLEN', k('s', name))
local hidden = redis.call('ZCOUNT', k('l', name), '(' .. now, '+inf')
local delayed = 0
for _, id in ipairs(redis.call('HKEYS', k('w', name))) do
  local due = redis.call('ZSCORE', k('l', name), id)
  if due and tonumber(due) > now then delayed = delayed + 1 end
end
local in_flight = hidden - delayed
return {total - hidden, in_flight, delayed}
"""
)

#: The source of each script by name.
SOURCES: dict[str, str] = {
    name: source
    for name, source in globals().items()
    if name.isupper() and not name.startswith("_") and name != "GROUP" and isinstance(source, str)
}
#: The SHA1 digest each script runs by (``EVALSHA``).
SHA1: dict[str, str] = {
    name: hashlib.sha1(source.encode("utf-8")).hexdigest() for name, source in SOURCES.items()
}

__all__ = [
    "ACKNOWLEDGE",
    "DEAD_LETTER",
    "DECLARE_QUEUE",
    "DELETE_QUEUE",
    "DELETE_TOPIC",
    "EXTEND",
    "GIVE_BACK",
    "GROUP",
    "PUBLISH",
    "PUBLISH_QUEUE",
    "PURGE",
    "RECEIVE",
    "SHA1",
    "SOURCES",
    "STATS",
]
