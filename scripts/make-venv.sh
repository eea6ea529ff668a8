#!/bin/sh
# Create the virtual environment for `make`: python3 -m venv, and where the system
# Python ships without ensurepip (Debian and Ubuntu without python3-venv), a venv
# without pip that then gets pip from PyPI, so that nothing has to be installed by hand.
set -eu
PYTHON=${1:-python3}
VENV=${2:-.venv}
if "$PYTHON" -m venv "$VENV" 2>/dev/null && [ -x "$VENV/bin/pip" ]; then
    exit 0
fi
echo "python venv has no pip here; bootstrapping pip from PyPI" >&2
rm -rf "$VENV"
"$PYTHON" -m venv --without-pip "$VENV"
"$VENV/bin/python" - <<'PY'
import json, os, subprocess, sys, tempfile, urllib.parse, urllib.request

index = "https://pypi.org/pypi/pip/json"
with urllib.request.urlopen(index, timeout=60) as r:
    files = json.load(r)["urls"]
wheel = next(f for f in files if f["filename"].endswith(".whl"))
path = os.path.join(tempfile.mkdtemp(), wheel["filename"])
urllib.request.urlretrieve(urllib.parse.urljoin(index, wheel["url"]), path)
subprocess.check_call([sys.executable, os.path.join(path, "pip"), "install", "--quiet", path])
PY
