#!/usr/bin/env bash
# Installs the system Chromium that the annotation app's browser tests drive through Playwright
# (tests/test_annotate_browser.py, tests/helpers/browser.py). Playwright's own browser download is not
# used: the tests pass Debian's /usr/bin/chromium as executable_path. Safe to run again.
set -euo pipefail

for name in chromium chromium-browser; do  # the names tests/helpers/browser.py looks for
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium is installed: $(command -v "$name")"
    exit 0
  fi
done

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  # Try the package lists already on the machine first; refresh them only if that fails.
  if ! apt-get install -y --no-install-recommends chromium; then
    apt-get update
    apt-get install -y --no-install-recommends chromium
  fi
  echo "chromium is installed: $(command -v chromium)"
  exit 0
fi

# Not root or no apt-get: say how, and leave it to the person (the browser tests skip, naming this script).
cat <<'MSG'
chromium is not installed, and this script can only install it as root with apt-get. Install it with:
  Debian/Ubuntu:  sudo apt-get install -y --no-install-recommends chromium
  Fedora:         sudo dnf install chromium
  macOS:          brew install --cask chromium
(any Chromium on PATH as `chromium` or `chromium-browser` works). Until then the browser tests skip.
MSG
exit 0
