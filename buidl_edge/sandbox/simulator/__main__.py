"""`python -m buidl_edge.sandbox.simulator`: run the fake Slack in this process."""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402

from . import serve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m buidl_edge.sandbox.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", default=None, help="write the bound port here once listening")
    args = parser.parse_args()
    try:
        serve(args.host, args.port, args.ready_file)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")


if __name__ == "__main__":
    main()
