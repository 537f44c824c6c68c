"""Every transition of a job record, each one Lua script: atomic, one round trip (``rerankq.jobstore`` runs
them; ``rerankq.jobs`` draws the state machine they implement).

KEYS: the record, its done list, the callback outbox's due zset and events hash (``JobStore._script_keys``);
the scripts of many jobs (``*_MANY``: one call for a whole round) take the outbox's keys first, then each job's.
"""

# Shared Lua: KEYS[1] record, KEYS[2] done list, KEYS[3] and KEYS[4] the callback outbox's due zset and events
# hash. ``finish_with`` writes a terminal state, wakes waiters (the creator's notify list, with the outcome a waiter
# reads: ``STATE RECORD-KEY`` and a JSON line of result / result_uri / error; and the done list when
# a waiter marked the record ``watched``: ``OBSERVE`` with its watch flag) and,
# for a job with a ``callback_url``, writes its event to the outbox in the same script (``rerankq.callbacks``
# reads it: a snapshot of the ended record). Each script reads the fields it needs in one HMGET: every command a
# script runs is Redis CPU spent per job.
LIB = """
local function job_event(rec, due, events, state, url)
  local flat, record = redis.call('HGETALL', rec), {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  local at = record['finished_at'] or '0'
  local id = 'evt_' .. string.sub(redis.sha1hex(rec .. '|' .. (record['created_at'] or '') .. '|' .. at), 1, 32)
  redis.call('HSET', events, id, cjson.encode({id = id, url = url, type = 'job.' .. state, created_at = at,
                                               key = rec, job = record}))
  redis.call('ZADD', due, tonumber(at), id)
end
-- ``f``: the record's callback_url, notify, ends and watched, when the caller read them already (else nil).
-- ``outcome``: the JSON line a waiter reads of the end (result, result_uri or error), when the caller made it (else
-- made here). ``notes``: when given, the pushes onto notify lists are collected there for ``push_notes`` (one
-- ``RPUSH`` per list for all the jobs a call ends: a round's jobs share their creator's list).
local function end_job(rec, done, due, events, state, ttl, f, outcome, notes, ...)
  f = f or redis.call('HMGET', rec, 'callback_url', 'notify', 'ends', 'watched')
  redis.call('HDEL', rec, 'result', 'result_uri', 'error', 'wire', 'watched')
  redis.call('HSET', rec, 'state', state, 'ends', (tonumber(f[3]) or 0) + 1, ...)
  if f[1] then job_event(rec, due, events, state, f[1]) end
  redis.call('EXPIRE', rec, ttl)
  if f[4] then
    redis.call('RPUSH', done, '1')
    redis.call('EXPIRE', done, ttl)
  end
  if f[2] then  -- the creator's notify list: the end and what a waiter reads of it, so it need not read the record
    if not outcome then
      local args, read = {...}, {}
      for i = 1, #args - 1, 2 do
        if args[i] == 'result' or args[i] == 'result_uri' or args[i] == 'error' then read[args[i]] = args[i + 1] end
      end
      outcome = cjson.encode(read)
    end
    local entry = state .. ' ' .. rec .. '\\n' .. outcome
    if notes then
      local note = notes[f[2]]
      if note then note[#note + 1] = entry else notes[f[2]] = {entry, ttl = ttl} end
    elseif redis.call('RPUSH', f[2], entry) == 1 then
      redis.call('EXPIRE', f[2], ttl)
    end
  end
end
-- A list new with these pushes gets the TTL of the first job that pushed onto it (as one push at a time would).
local function push_notes(notes)
  for key, note in pairs(notes) do
    for i = 1, #note, 500 do
      local last = math.min(i + 499, #note)
      if redis.call('RPUSH', key, unpack(note, i, last)) == last then redis.call('EXPIRE', key, note.ttl) end
    end
  end
end
local function finish_with(state, ttl, ...)
  end_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], state, ttl, nil, nil, nil, ...)
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

# CREATE for a job whose message the caller publishes next (the SDK): KEYS[2] is its queue's pending set, which
# gets the job (``rerankq.worker.reaper``). ARGV: ttl, pending score, job id, then field/value pairs.
CREATE_SENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
return 1
"""

# ARGV: now, failure ttl, watch (1: a waiter will block on the done list: mark the record so that its end pushes a
# token there). The state after an expiry check (nil when gone).
OBSERVE = LIB + """
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_at', 'watched')
local state = f[1]
if not state then return false end
if expire_if_due(state, f[2], tonumber(ARGV[1]), ARGV[2]) then return 'expired' end
if ARGV[3] == '1' and not f[3] and (state == 'queued' or state == 'running' or state == 'finishing') then
  redis.call('HSET', KEYS[1], 'watched', '1')
end
return state
"""

# One script for all the jobs a round takes. KEYS: the callback outbox's due zset and events hash, then each job's
# record and done list. ARGV: worker, now, failure ttl, max solo attempts, then (pairs_total, solo) per job, solo
# = 1 when this attempt runs alone. Returns per job {state, created_at, fence, died_before, changed} (changed =
# 1 when this call ended the job), or 0 when its record is gone.
START_MANY = LIB + """
local worker, now, ttl, max_solo = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local out = {}
for j = 1, (#KEYS - 2) / 2 do
  local rec, done, total, alone = KEYS[2 * j + 1], KEYS[2 * j + 2], ARGV[3 + 2 * j], ARGV[4 + 2 * j]
  local f = redis.call('HMGET', rec, 'state', 'created_at', 'deadline_at', 'solo', 'worker', 'deliveries', 'fence',
                       'error')
  local state, created = f[1], f[2] or ARGV[2]
  local died = (state == 'running' or state == 'finishing') and 1 or 0
  local deadline = tonumber(f[3] or '')
  local deliveries, solo = (tonumber(f[6]) or 0) + 1, tonumber(f[4] or '0')
  if not state then
    out[j] = 0
  elseif state ~= 'queued' and died == 0 then
    out[j] = {state, created, 0, 0, 0}
  elseif deadline and now > deadline then
    end_job(rec, done, KEYS[1], KEYS[2], 'expired', ttl, nil, nil, nil, 'finished_at', now, 'error',
            'deadline passed before it started')
    out[j] = {'expired', created, 0, died, 1}
  elseif died == 1 and solo >= max_solo then
    end_job(rec, done, KEYS[1], KEYS[2], 'failed', ttl, nil, nil, nil, 'deliveries', deliveries, 'finished_at', now,
            'error',
            'delivered ' .. (deliveries - 1) .. ' times; each time the worker died: last on ' .. (f[5] or '?'))
    out[j] = {'failed', created, 0, died, 1}
  else
    if alone == '1' then solo = solo + 1 end
    local fence = (tonumber(f[7]) or 0) + 1
    if f[8] then redis.call('HDEL', rec, 'error') end
    redis.call('HSET', rec, 'state', 'running', 'worker', worker, 'started_at', ARGV[2], 'pairs_total', total,
               'pairs_done', 0, 'deliveries', deliveries, 'fence', fence, 'solo', solo)
    out[j] = {'running', created, fence, died, 0}
  end
end
return out
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

# One script for all the jobs a pass or a round ends. KEYS: the callback outbox's due zset and events hash, then
# each job's record and done list. ARGV: per job, fence, state, ttl, the outcome's JSON line for the notify list
# (``end_job``: made by the caller, where it costs no Redis CPU; cjson in the script would), the number of
# field/value items, the items. Returns per job the state written, or 'stale' / the state that refused it, or 0
# when the record is gone.
FINISH_MANY = LIB + """
local out, notes, a = {}, {}, 1
for j = 1, (#KEYS - 2) / 2 do
  local rec, done = KEYS[2 * j + 1], KEYS[2 * j + 2]
  local fence, state, ttl, outcome, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local first = a + 5
  a = first + n
  local f = redis.call('HMGET', rec, 'state', 'fence', 'callback_url', 'notify', 'ends', 'watched')
  if not f[1] then
    out[j] = 0
  elseif f[2] ~= fence then
    out[j] = 'stale'
  elseif f[1] ~= 'running' and f[1] ~= 'finishing' then
    out[j] = f[1]
  else
    end_job(rec, done, KEYS[1], KEYS[2], state, ttl, {f[3], f[4], f[5], f[6]}, outcome, notes,
            unpack(ARGV, first, a - 1))
    out[j] = state
  end
end
push_notes(notes)
return out
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

# ARGV: now, ttl. KEYS[5]: the cancels counter, moved by every cancel (workers check it between passes rather than
# every job's state). The state before the call (false when gone). Finishing jobs are past cancelling.
CANCEL = LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' or state == 'running' then
  finish_with('cancelled', ARGV[2], 'finished_at', ARGV[1])
  redis.call('INCR', KEYS[5])
end
return state
"""

# ARGV: now, ttl, error. Fails a job that never started (an invalid message for an existing queued record);
# returns the state before (false when gone). Any other state is left as it is.
FAIL = LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' then
  finish_with('failed', ARGV[2], 'finished_at', ARGV[1], 'error', ARGV[3])
end
return state
"""
