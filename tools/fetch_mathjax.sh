#!/usr/bin/env bash
# Vendor MathJax 3 from npm into _vendor/mathjax, so formulas typeset with the network off.
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${MATHJAX_VERSION:-3.2.2}"
if ! command -v npm >/dev/null; then
  echo "fetch_mathjax: npm not found; install Node.js (apt-get install -y nodejs npm)" >&2; exit 2
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
npm install --prefix "$tmp" --no-audit --no-fund --silent "mathjax@${ver}"
src="$tmp/node_modules/mathjax/es5"
rm -rf _vendor/mathjax && mkdir -p _vendor/mathjax/output/chtml/fonts
cp "$src/tex-mml-chtml.js" _vendor/mathjax/
cp -r "$src/output/chtml/fonts/woff-v2" _vendor/mathjax/output/chtml/fonts/
# The TeX extensions MathJax autoloads on first use (\boldsymbol, \cancel, \mathtip, ...): without them a
# page that uses one stops typesetting altogether (offline there is no CDN to fall back on)
mkdir -p _vendor/mathjax/input/tex
cp -r "$src/input/tex/extensions" _vendor/mathjax/input/tex/
echo "${ver}" > _vendor/mathjax/.complete
echo "MathJax ${ver} vendored in _vendor/mathjax (with its TeX extensions)"
