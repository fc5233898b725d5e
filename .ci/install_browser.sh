#!/usr/bin/env bash
# Install what tests/test_report_browser.py needs: Debian's chromium and the Playwright driver.
#
# Playwright drives the system browser through `executable_path=/usr/bin/chromium`; its own
# browser download (`playwright install`) is never used, so this works with only Debian's
# archive and PyPI reachable. Idempotent: does nothing when both are already there.
#
# Usage: bash .ci/install_browser.sh [PYTHON]   (PYTHON defaults to $PYTHON, then python3)
set -euo pipefail

PY="${1:-${PYTHON:-python3}}"

if [ ! -x /usr/bin/chromium ]; then
  echo "install_browser: installing Debian's chromium" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ "$PY" = "true" ]; then exit 0; fi  # chromium only: the dev extra brings playwright

if ! "$PY" -c "import playwright.sync_api" 2>/dev/null; then
  echo "install_browser: installing the playwright python package" >&2
  "$PY" -m pip install -q "playwright>=1.40"
fi

/usr/bin/chromium --version >&2 2>/dev/null || true
"$PY" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))" >&2
