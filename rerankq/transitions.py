"""Every transition of a job record, each one Lua script: atomic, one round trip (``rerankq.jobstore`` runs
them; ``rerankq.jobs`` draws the state machine they implement).

KEYS: the record, its done list, the callback outbox's due zset and events hash (``JobStore._script_keys``).
"""

# Shared Lua: KEYS[1] record, KEYS[2] done list, KEYS[3] and KEYS[4] the callback outbox's due zset and events
# hash. ``finish_with`` writes a terminal state, wakes waiters (the done list, and the creator's notify list) and,
# for a job with a ``callback_url``, writes its event to the outbox in the same script (``rerankq.callbacks``
# reads it: a snapshot of the ended record). Each script reads the fields it needs in one HMGET: every command a
# script runs is Redis CPU spent per job.
LIB = """
local function job_event(state, url)
  local flat, record = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  local at = record['finished_at'] or '0'
  local id = 'evt_' .. string.sub(redis.sha1hex(KEYS[1] .. '|' .. (record['created_at'] or '') .. '|' .. at), 1, 32)
  redis.call('HSET', KEYS[4], id, cjson.encode({id = id, url = url, type = 'job.' .. state, created_at = at,
                                                key = KEYS[1], job = record}))
  redis.call('ZADD', KEYS[3], tonumber(at), id)
end
local function finish_with(state, ttl, ...)
  local f = redis.call('HMGET', KEYS[1], 'callback_url', 'notify', 'ends')
  redis.call('HDEL', KEYS[1], 'result', 'result_uri', 'error', 'wire')
  redis.call('HSET', KEYS[1], 'state', state, 'ends', (tonumber(f[3]) or 0) + 1, ...)
  if f[1] then job_event(state, f[1]) end
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('EXPIRE', KEYS[2], ttl)
  if f[2] and redis.call('RPUSH', f[2], state .. ' ' .. KEYS[1]) == 1 then redis.call('EXPIRE', f[2], ttl) end
end
local function expire_if_due(state, deadline, now, ttl)
  if state ~= 'queued' then return false end
  deadline = tonumber(deadline or '')
  if deadline and now > deadline then
    finish_with('expired', ttl, 'finished_at', now, 'error', 'deadline passed before it started')
    return true
  end
  return false
end
"""

# ARGV: ttl, then field/value pairs. 1 when created, 0 when the id exists.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# ARGV: now, failure ttl. The state after an expiry check (nil when gone).
OBSERVE = LIB + """
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_at')
local state = f[1]
if not state then return false end
if expire_if_due(state, f[2], tonumber(ARGV[1]), ARGV[2]) then return 'expired' end
return state
"""

# ARGV: worker, now, pairs_total, failure ttl, max solo attempts, solo (1 = this attempt runs alone).
# Returns {state, created_at, fence, died_before, changed}: changed = 1 when this call ended the job.
START = LIB + """
local f = redis.call('HMGET', KEYS[1], 'state', 'created_at', 'deadline_at', 'solo', 'worker', 'deliveries', 'fence',
                     'error')
local state = f[1]
if not state then return false end
local now, ttl = tonumber(ARGV[2]), ARGV[4]
local created = f[2] or ARGV[2]
if state ~= 'queued' and state ~= 'running' and state ~= 'finishing' then return {state, created, 0, 0, 0} end
local died = 0
if state ~= 'queued' then died = 1 end
local deadline = tonumber(f[3] or '')
if deadline and now > deadline then
  finish_with('expired', ttl, 'finished_at', now, 'error', 'deadline passed before it started')
  return {'expired', created, 0, died, 1}
end
local deliveries = (tonumber(f[6]) or 0) + 1
local solo = tonumber(f[4] or '0')
if died == 1 and solo >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'deliveries', deliveries)
  finish_with('failed', ttl, 'finished_at', now, 'error', 'delivered ' .. (deliveries - 1) ..
              ' times; each time the worker died: last on ' .. (f[5] or '?'))
  return {'failed', created, 0, died, 1}
end
if ARGV[6] == '1' then solo = solo + 1 end
local fence = (tonumber(f[7]) or 0) + 1
if f[8] then redis.call('HDEL', KEYS[1], 'error') end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[2], 'pairs_total', ARGV[3],
           'pairs_done', 0, 'deliveries', deliveries, 'fence', fence, 'solo', solo)
return {'running', created, fence, died, 0}
"""

# ARGV: fence, pairs newly done. Only the attempt holding the job counts.
PROGRESS = """
local f = redis.call('HMGET', KEYS[1], 'fence', 'state')
if f[1] == ARGV[1] and f[2] == 'running' then
  redis.call('HINCRBY', KEYS[1], 'pairs_done', ARGV[2])
end
"""

# ARGV: fence. 'finishing' when this attempt may now write the result; otherwise the state that stops it.
COMMIT = """
local f = redis.call('HMGET', KEYS[1], 'state', 'fence')
local state = f[1]
if not state then return false end
if f[2] ~= ARGV[1] then return 'stale' end
if state == 'running' then redis.call('HSET', KEYS[1], 'state', 'finishing') return 'finishing' end
return state
"""

# ARGV: fence, state, ttl, field/value pairs. The state written, or 'stale' / the state that refused it.
FINISH = LIB + """
local f = redis.call('HMGET', KEYS[1], 'state', 'fence')
local state = f[1]
if not state then return false end
if f[2] ~= ARGV[1] then return 'stale' end
if state ~= 'running' and state ~= 'finishing' then return state end
finish_with(ARGV[2], ARGV[3], unpack(ARGV, 4))
return ARGV[2]
"""

# ARGV: fence, reason. Back to queued after a transient failure (the message is redelivered or retried).
REQUEUE = """
local f = redis.call('HMGET', KEYS[1], 'fence', 'state', 'retries')
if f[1] ~= ARGV[1] then return 0 end
if f[2] ~= 'running' and f[2] ~= 'finishing' then return 0 end
local retries = (tonumber(f[3]) or 0) + 1
redis.call('HSET', KEYS[1], 'state', 'queued', 'last_error', ARGV[2], 'retries', retries)
return retries
"""

# ARGV: now, ttl. The state before the call (false when gone). Finishing jobs are past cancelling.
CANCEL = LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' or state == 'running' then
  finish_with('cancelled', ARGV[2], 'finished_at', ARGV[1])
end
return state
"""
