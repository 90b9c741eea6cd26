#!/usr/bin/env bash
# Installs the S3-compatible server the tiering tests use: s3s-fs 0.14.1 from crates.io (later
# versions need Rust 1.96), into $HOME/.cache/rocketmq-k8s (kept between runs). Prints its path.
set -euo pipefail
cache="${RMQ_CLIENT_CACHE:-$HOME/.cache/rocketmq-k8s}"
version="0.14.1"
root="$cache/s3s-fs-$version"
mkdir -p "$cache"
# Tests may call this concurrently: one install at a time.
exec 9>"$cache/s3s-fs.lock"
flock 9
if [ ! -x "$root/bin/s3s-fs" ]; then
  CARGO_TARGET_DIR="$cache/s3s-fs-target" cargo install -q s3s-fs --version "$version" \
    --features binary --root "$root" >&2
fi
echo "$root/bin/s3s-fs"
