"""What BUIDL_APP names: an EdgeApp, or a slack_bolt App to run in-process.

slack_bolt is never imported here unless the user's module already made a Bolt object (then it is
loaded anyway); an EdgeApp costs nothing extra.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from buidl_edge.api.app import AppError, EdgeApp
from buidl_edge.api.loading import as_edge_app, import_app

if TYPE_CHECKING:
    from slack_bolt import App


def load_edge_or_bolt_app(spec: str) -> EdgeApp | App:
    """Import `module:attribute`: an EdgeApp, or a Bolt `App`; AppError (one line) for anything
    else, an `AsyncApp` included."""
    app = import_app(spec)
    if is_bolt_object(app):
        return checked_bolt_app(app, spec)
    return as_edge_app(app, spec)


def is_bolt_object(app: object) -> bool:
    return type(app).__module__.startswith("slack_bolt.")


def checked_bolt_app(app: object, spec: str) -> App:
    """`app` if it is a slack_bolt App buidl-edge can run; AppError saying why not."""
    kind = type(app).__name__
    if any(cls.__name__ == "AsyncApp" for cls in type(app).__mro__):
        raise AppError(f"{spec} is a Bolt AsyncApp: buidl-edge runs listeners on gevent, not asyncio; "
                       "make it a slack_bolt App (the same listeners, as plain functions)")
    from slack_bolt import App

    if not isinstance(app, App):
        raise AppError(f"{spec} is a Bolt {kind}, not an App: name the App itself (`app = App(...)`)")
    return app


def describe_bolt_app(app: App) -> str:
    """What `check` and the worker's start line say `run` will run."""
    import slack_bolt.version

    return f"Bolt App {app.name!r} (slack_bolt {slack_bolt.version.__version__}), {len(app._listeners)} listener(s)"
