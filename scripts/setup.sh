#!/usr/bin/env bash
# Installs or checks what building and testing this project needs on a fresh machine.
# Idempotent: a warm machine passes through in a second.
#
# Today that is a Rust toolchain (1.89 or newer, with rustfmt and clippy). The store is pure
# Rust: no protoc, no system libraries. Later parts (gRPC clients, Kubernetes binaries, an S3
# server) add their installers here.
set -euo pipefail

need_rust="1.89"

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain found; installing Debian's (needs root)" >&2
    apt-get update -qq && apt-get install -y -qq cargo rustc rustfmt rust-clippy
  fi
fi

version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$version" | sort -V | head -n1)" != "$need_rust" ]; then
  echo "setup: rustc $version is older than $need_rust (edition 2024, let-chains, File::try_lock)" >&2
  exit 1
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$component"
    else
      echo "setup: cargo $component is missing and there is no rustup to add it" >&2
      exit 1
    fi
  fi
done

echo "setup: rustc $version, $(cargo fmt --version), $(cargo clippy --version)"
