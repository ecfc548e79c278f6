#!/usr/bin/env bash
# Re-fetch the vendored uPlot build from the npm registry and check it is the recorded tarball.
# Usage: services/supervisor/static/vendor/fetch-uplot.sh   (needs npm, tar, sha256sum)
set -euo pipefail
VERSION=1.6.32
SHA256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@${VERSION}" >/dev/null)
echo "${SHA256}  ${work}/uplot-${VERSION}.tgz" | sha256sum -c -
tar -xzf "${work}/uplot-${VERSION}.tgz" -C "$work"
mkdir -p "${here}/uplot"
cp "${work}/package/dist/uPlot.iife.min.js" "${work}/package/dist/uPlot.min.css" "${work}/package/LICENSE" "${here}/uplot/"
echo "uPlot ${VERSION} -> ${here}/uplot"
