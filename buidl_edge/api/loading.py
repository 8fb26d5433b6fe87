"""Loading the app BUIDL_APP names: `module:attribute`, imported from the working directory, with
an AppError that says exactly what is wrong (a missing module, a typo'd attribute, a failing
import, something that is not an app)."""
from __future__ import annotations

import importlib

from buidl_edge.api.app import AppError, EdgeApp, HandlerSignatureError


def load_app(spec: str) -> EdgeApp:
    """Import `module:attribute` and check it is an EdgeApp; AppError says exactly what is wrong."""
    return as_edge_app(import_app(spec), spec)


def as_edge_app(app: object, spec: str) -> EdgeApp:
    """`app` if it is an EdgeApp, else AppError saying what it is instead."""
    if not isinstance(app, EdgeApp):
        attr = spec.partition(":")[2]
        raise AppError(f"{spec} is not an EdgeApp (it is {type(app).__name__!r}); "
                       f"make it `{attr} = EdgeApp(...)`")
    return app


def import_app(spec: str) -> object:
    """Import `module:attribute` and return what it names, whatever it is (an EdgeApp, a Bolt App);
    AppError says exactly what is wrong.

    The working directory goes on sys.path first, as gunicorn does, so `BUIDL_APP=my_bot:app`
    works from the directory holding my_bot.py whichever way the process was started.
    An exception raised while the user's module runs is kept as the AppError's `details`
    (its traceback), so the caller can show where it happened.
    """
    import os
    import sys

    from buidl_edge.config import ConfigError, check_app_spec

    try:
        check_app_spec(spec)
    except ConfigError as exc:
        raise AppError(str(exc)) from None
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except HandlerSignatureError:
        raise  # it names the handler's file and line: one line says it all
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppError(f"cannot import app module {module_name!r}: no module named {missing!r} "
                           f"(looked in {cwd} and on sys.path)") from None
        raise _failed_import(module_name, exc) from None
    except Exception as exc:  # anything the user's module raised while it ran, SyntaxError included
        raise _failed_import(module_name, exc) from None
    if not hasattr(module, attr):
        apps = [name for name, value in vars(module).items()
                if isinstance(value, EdgeApp) or type(value).__module__.startswith("slack_bolt.app")]
        import difflib  # only for this hint: a worker that started keeps every module it loaded

        close = difflib.get_close_matches(attr, apps, n=1) or apps[:1]
        hint = f"; did you mean {module_name}:{close[0]}?" if close else "; it defines no EdgeApp or Bolt App"
        raise AppError(f"app module {module_name!r} has no attribute {attr!r}{hint}")
    return getattr(module, attr)


def _failed_import(module_name: str, exc: BaseException) -> AppError:
    """An AppError for an exception raised inside the user's module, with the traceback of the
    user's frames only (importlib's and ours left out)."""
    import traceback

    ours = {__file__, importlib.__file__}
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen importlib") and f.filename not in ours]
    head = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    details = "".join([*head, *traceback.format_exception_only(type(exc), exc)])
    error = AppError(f"importing app module {module_name!r} failed: {type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:300]}")
    error.details = details
    return error
