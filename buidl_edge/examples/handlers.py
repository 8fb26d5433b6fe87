"""Run it: BUIDL_APP=buidl_edge.examples.handlers:app buidl-edge worker"""
import re

from buidl_edge import EdgeApp

app = EdgeApp("my-bot")


@app.event("app_mention")
def hello(event, ctx):
    ctx.client.reactions_add(channel=event["channel"], name="eyes", timestamp=event["ts"])  # at once
    ctx.say("Hello!", thread_ts=event["ts"])  # queued: durable, ordered, rate-limited, sent once


@app.message(re.compile(r"^deploy (\w+)"))  # not the bot's own messages, other bots' or edits
def deploy(event, ctx):
    (service,) = ctx.matches
    posted = ctx.client.chat_postMessage(channel=event["channel"], text=f"Deploying {service}…")
    ctx.client.chat_update(channel=posted["channel"], ts=posted["ts"], text=f"Deployed {service}.")


@app.command("/standup")
def standup(payload, ctx):
    ctx.respond("Noted. Only you can see this.")  # ephemeral, through the response_url
    ctx.respond(f"<@{payload['user_id']}> posted a standup.", response_type="in_channel")


@app.event("assistant_thread_started")
def suggest(event, ctx):
    thread = event["assistant_thread"]
    ctx.client.assistant_threads_setSuggestedPrompts(
        channel_id=thread["channel_id"], thread_ts=thread["thread_ts"],
        prompts=[{"title": "Review", "message": "Review my branch"}])


@app.message()  # every message a person writes; here, those in the assistant's DM threads
def answer(event, ctx):
    if event.get("channel_type") != "im" or "thread_ts" not in event:
        return
    ctx.set_status("is thinking…")
    if event["text"].strip() == "never mind":
        ctx.clear_status()  # no answer after all (posting one clears it too)
        return
    ctx.say(f"You asked: {event['text']}", thread_ts=event["thread_ts"])  # your model's answer
