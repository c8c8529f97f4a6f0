#!/usr/bin/env bash
# Create the project's virtual environment with whatever this machine offers.
# usage: tools/bootstrap-venv.sh PYTHON VENV_DIR
set -euo pipefail
py=${1:-python3}
venv=${2:-.venv}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "bootstrap: '$py' not found: install Python 3.10+ (Debian/Ubuntu: apt-get install python3)" >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "bootstrap: dbnet needs Python >= 3.10, '$py' is $("$py" -V 2>&1)" >&2
  exit 1
fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  exit 0
fi
rm -rf "$venv"
if "$py" -m venv "$venv" 2>/dev/null; then
  exit 0
fi
# Debian/Ubuntu split venv's pip bootstrap (ensurepip) into python3-venv; try virtualenv instead.
rm -rf "$venv"
if "$py" -m virtualenv --version >/dev/null 2>&1 || "$py" -m pip install --user --quiet virtualenv 2>/dev/null \
   || "$py" -m pip install --user --quiet --break-system-packages virtualenv 2>/dev/null; then
  "$py" -m virtualenv --quiet "$venv" && exit 0
fi
echo "bootstrap: cannot create a virtual environment with $py: install the venv module" \
     "(Debian/Ubuntu: apt-get install python3-venv) and run make again" >&2
exit 1
