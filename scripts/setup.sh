#!/usr/bin/env bash
# Installs ferry's build and test dependencies from Debian packages (Debian 12).
# CUDA (nvcc + cuBLAS) is optional and expected at /usr/local/cuda when present.
set -euo pipefail
pkgs=(build-essential cmake pkg-config liburing-dev libhwloc-dev libpcre2-dev libutf8proc-dev
      python3 clang clang-format libclang-rt-14-dev
      libmicrohttpd-dev libjansson-dev curl)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
