# Sourced by scripts/demo and scripts/test: a project venv with buidl-edge installed.
# Usage: . scripts/_venv.sh [extra]   (extra: a setup.cfg extra such as "test")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "buidl-edge needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install --disable-pip-version-check -q -e "$spec" 2>&1 | grep -v '^WARNING: Location' >&2 || true
.venv/bin/python -c 'import buidl_edge, gevent, websocket, redis' || { echo "install failed" >&2; exit 1; }
