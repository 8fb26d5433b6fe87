"""The Bolt app scripts/bench.py measures two ways: under Bolt's own SocketModeHandler (the `bolt`
peer, scripts/_bench_peers.py) and unchanged as BUIDL_APP behind a buidl-edge worker (`edge_bolt`).

One `message` listener that does nothing, like every other client's, so the figures measure the
path to the listener and the ack, not the listener. Its client is aimed at the simulator; App()
runs auth.test there when it is built (token verification left on).
"""
import os

from slack_bolt import App
from slack_sdk import WebClient

app = App(client=WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]))


@app.event("message")
def on_message(event):
    return None
