#!/usr/bin/env bash
# The browser that `make test-render` reads the built pages with (issue 19 §1): Debian's chromium,
# headless, and fonts-noto-cjk so Chinese text renders. Installs what is missing where it can
# (root with apt-get); otherwise prints the exact command and exits 1 (the render test needs it).
set -u
PKGS=(chromium fonts-noto-cjk)
missing=()
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == *"install ok installed"* ]] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "browser: ${PKGS[*]} installed"; exit 0
fi
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "browser: ${missing[*]} not installed; the render test (make test-render) needs them:"
  echo "  sudo $cmd"
  exit 1
fi
echo "browser: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
  || { echo "browser: could not install ${missing[*]}; retry with: $cmd"; exit 1; }
