#!/usr/bin/env bash
# Debian packages that some chapters' full runs read; `make data` runs this before kexue.data.prepare.
# Installs what is missing where it can (root with apt-get); otherwise prints the exact command.
# It never fails `make data`: only full runs need these (smoke scale and `make test` do not).
#   dataset-fashion-mnist   wgan-critique's full run (/usr/share/datasets/fashion-mnist, checked by sha256)
set -u
PKGS=(dataset-fashion-mnist)
missing=()
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == *"install ok installed"* ]] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "debian data: ${PKGS[*]} installed"
  exit 0
fi
cmd="apt-get install -y ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "debian data: ${missing[*]} not installed, and this is not a Debian/Ubuntu system (no apt-get);" \
       "only wgan-critique's full run needs it (see README, \"Run one chapter\"); make data goes on"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "debian data: ${missing[*]} not installed (wgan-critique's full run needs it); install it with:"
  echo "  sudo $cmd"
  exit 0
fi
echo "debian data: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if apt-get install -y -q --no-install-recommends "${missing[@]}" \
   || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }; then
  echo "debian data: installed ${missing[*]}"
else
  echo "debian data: could not install ${missing[*]} (no network or no package list?); make data goes on;" \
       "retry with: $cmd"
fi
exit 0
