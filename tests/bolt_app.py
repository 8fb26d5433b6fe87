"""A stock Bolt for Python app, as a team would write it for Bolt's own SocketModeHandler.

The tests run it unchanged as `BUIDL_APP=bolt_app:app` (tests/ is put on PYTHONPATH): nothing in it
knows about buidl-edge. Its client's base_url points it at the simulator, as it would anywhere.
Each listener shows what it saw by what it posts, so the tests read it from the simulator.
"""
import os
import time

from slack_bolt import App, Assistant, BoltResponse
from slack_sdk import WebClient

app = App(client=WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]))


@app.middleware
def tag_every_request(context, next):
    context["tagged"] = "yes"
    next()


def skip_it(req, resp, next):
    """A listener middleware that does not call next(): the listener is skipped."""
    return BoltResponse(status=404, body="skipped")


@app.event("app_mention")
def mention(event, say, context):
    say(f"bolt heard: {event['text']} (tagged {context['tagged']})")


@app.message("retry-check")
def retry_check(message, say, request):
    say(f"retry-num {request.headers.get('x-slack-retry-num')} reason {request.headers.get('x-slack-retry-reason')}")


@app.message("skip-me", middleware=[skip_it])
def never_runs(say):
    say("the skipped listener ran")


@app.message("self-check")
def self_check(say):
    say("the bot heard itself")


@app.message("slow")
def slow(message, client):
    """`slow N`: posts `started`, sleeps N seconds, posts `done`, each at once through the client."""
    channel, seconds = message["channel"], float(message["text"].split()[1])
    client.chat_postMessage(channel=channel, text=f"started {message['text']} in {os.getpid()}")
    time.sleep(seconds)
    client.chat_postMessage(channel=channel, text=f"done {message['text']}")


@app.message("spin")
def spin(message, say):
    """CPU-bound for a while, without yielding: what holds a worker's hub."""
    until = time.monotonic() + float(message["text"].split()[1])
    while time.monotonic() < until:
        pass
    say("spun")


@app.message("boom")
def boom(message):
    raise RuntimeError("the listener failed on purpose")


@app.command("/echo")
def echo(ack, command):
    ack(f"echo: {command['text']}")


@app.command("/hello-socket-mode")
def hello_socket_mode(ack, say):
    ack()
    say("hello from a slash command")


@app.command("/late")
def late(ack, command):
    """Answers after `text` seconds: past the ack deadline when that is longer."""
    time.sleep(float(command["text"]))
    ack(f"late answer after {command['text']}s")


@app.command("/private")
def private(ack, respond, command):
    ack()
    respond(f"only you see: {command['text']}")


def lazy_reply(body, client):
    client.chat_postMessage(channel=body["channel_id"], text=f"lazy listener ran for {body['command']}")


app.command("/lazy")(ack=lambda ack: ack(), lazy=[lazy_reply])


@app.shortcut("do-something")
def shortcut(ack, body, client):
    ack()
    client.chat_postMessage(channel="C0SHORTCUT", text=f"shortcut by {body['user']['id']}")


@app.view("survey")
def survey(ack, view):
    ack(response_action="errors", errors={"answer": "Say a little more"})


@app.options("pick-one")
def pick_one(ack, payload):
    ack(options=[{"text": {"type": "plain_text", "text": payload["value"].upper()}, "value": "v1"}])


@app.message("stream-me")
def streamed(say_stream):
    stream = say_stream()
    stream.append(markdown_text="Streaming ")
    stream.append(markdown_text="an answer.")
    stream.stop()


assistant = Assistant()


@assistant.thread_started
def start_thread(say, set_suggested_prompts):
    say("How can I help?")
    set_suggested_prompts(prompts=[{"title": "Review", "message": "Review my branch"}])


@assistant.user_message
def answer(payload, say, set_status):
    set_status("is thinking…")
    say(f"You asked: {payload['text']}")


app.assistant(assistant)


if __name__ == "__main__":  # how it runs under Bolt itself
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    SocketModeHandler(app, os.environ["SLACK_APP_TOKEN"]).start()
