#!/usr/bin/env bash
# Screenshot built pages with headless Chromium, network off in effect (no background fetches):
#   bash tools/screenshot.sh _build/html/scoreboard.html out.png [width,height]
# Needs Debian's chromium (apt-get install -y chromium). Used to check that math typesets offline.
set -euo pipefail
page="$1"; out="$2"; size="${3:-1280,1600}"
ud="$(mktemp -d)"; trap 'rm -rf "$ud"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$ud" --virtual-time-budget=8000 --window-size="$size" \
  --screenshot="$out" "file://$(realpath "$page")" 2>/dev/null
echo "wrote $out"
