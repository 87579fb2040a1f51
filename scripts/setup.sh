#!/usr/bin/env bash
# Installs ferry's build and test dependencies from Debian packages (Debian 12), and the
# pinned npm clients the serve tests use (tests/serve/package-lock.json; Debian's nodejs and
# npm are installed only where node is missing).
# CUDA (nvcc + cuBLAS) is optional and expected at /usr/local/cuda when present.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(build-essential cmake pkg-config liburing-dev libhwloc-dev libpcre2-dev libutf8proc-dev
      python3 clang clang-format libclang-rt-14-dev
      libmicrohttpd-dev libjansson-dev curl)
command -v node >/dev/null || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# npm ci only when the lock file changed since the last install
if ! cmp -s tests/serve/package-lock.json tests/serve/node_modules/.ferry-installed-lock; then
  (cd tests/serve && npm ci --no-audit --no-fund --loglevel=error &&
     cp package-lock.json node_modules/.ferry-installed-lock)
fi
