"""The Redis store's key layout, its fixed names and sizes, and the prelude of its Lua scripts.

Keys (all under the prefix, `buidl:` unless the URL says `?prefix=`):

    k:<dedup key>       SET NX EX retention: `env:<envelope_id>`, `evt:<event_id>`, handlers' own keys
    inbox:stream        Stream + consumer group `edge`: one entry per claimed envelope, delivered to
                        the claiming worker (consumer = owner `host:pid`) in the claim script; XACKed
                        by `finish`; entries of a dead or silent consumer are taken over by `sweep`
                        (XAUTOCLAIM past the lease); trimmed with MAXLEN ~
    in:<envelope_id>    hash: the inbox row (state, owner, attempts, stream id; relayed: order_key,
                        next_at, deliveries); TTL once handled
    ine:<envelope_id>   the envelope's JSON (a string beside the small hash: cheaper); same TTL
    inbox               zset envelope_id -> received_at (listing and prune)
    rl:q:<order key>    relay mode: zset envelope_id -> received_at of the rows not yet delivered
    rl:ready            zset order key -> when its head (pending) may be delivered; a head in
                        flight (an inbox stream entry under the deliverer) keeps its key out
    ob:*                the outbox: rows (hashes), one zset per state, one queue per channel,
                        `ob:ready` (channels whose head may go, by the earliest time), token buckets
    w:<owner>, workers  heartbeat hashes with a TTL, and a zset of owners by last beat
    slots               zset holder -> lease expiry: the app's Socket Mode connections
    st:*                streamed answers: rows, each envelope's, the open ones, method buckets
                        (store/redis/streams.py)

A single Redis, not a cluster: every script builds its key names from the prefix it gets as
ARGV[1]. Redis has no migrations: a key it lacks is made by the first write that needs it.
"""
from __future__ import annotations

DEFAULT_PREFIX = "buidl:"
GROUP = "edge"
# Entries are tiny (the envelope id); in-flight ones are far fewer than this.
STREAM_MAXLEN = 10_000
# A heartbeat hash outlives a few missed beats (workers beat every 2 s; status hides >15 s).
WORKER_TTL_S = 60
# How many ready channels one send decision looks at (the rest: next round, at once).
CLAIM_SCAN = 200
# Rows read or dropped per round trip by admin scans and prune.
CHUNK = 500

# Prepended to every script that writes floats or builds keys. Floats written back go
# through `f()` (17 significant digits), because Redis turns a Lua number into text with only 14.
LUA_PRELUDE = r"""
local P = ARGV[1]
local function f(x) return string.format('%.17g', x) end
local function num(v, default) if v then return tonumber(v) end return default end
"""
