"""A slack_bolt App run in-process as the dispatcher's third target (beside the EdgeApp handlers
and the relay): `loading` (is BUIDL_APP a Bolt app?), `request` (envelope in, BoltResponse out as
the ack), `listeners` (Bolt's listeners and lazy listeners on the handler pool, tracked per
request), `target` (the `Target`). slack_bolt is imported only when the app is a Bolt app."""
