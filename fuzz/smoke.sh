#!/usr/bin/env bash
# Fuzz smoke for CI (see fuzz/README.md): builds every fuzz target on the stable toolchain and
# runs each for a short while from the committed corpus. Fails on any crash, panic, timeout or
# memory check failure; the failing input is left in fuzz/artifacts/TARGET/.
#
#   FUZZ_SMOKE_SECONDS   seconds per target (default 15)
#   FUZZ_TOOLCHAIN       rustup toolchain to build with (default: the default one, stable in CI)
#   TOOLS_DIR            where cargo-fuzz is installed (default target/tools, kept by CI caches)
#
# Stable works because the targets are built without a sanitizer (`--sanitizer none`): the
# coverage instrumentation cargo-fuzz asks rustc for uses only stable -C flags, and the harness
# counts what the code allocates itself instead of relying on ASan's malloc hooks.
set -euo pipefail
cd "$(dirname "$0")"

version=0.13.1
tools="${TOOLS_DIR:-$PWD/../target/tools}"
root="$tools/cargo-fuzz-$version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  echo "fuzz/smoke.sh: installing cargo-fuzz $version into $root"
  cargo install cargo-fuzz --version "$version" --locked --root "$root"
fi
export PATH="$root/bin:$PATH"

seconds="${FUZZ_SMOKE_SECONDS:-15}"
toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$FUZZ_TOOLCHAIN")
fi

# No sanitizer: stable then only gets stable -C flags (coverage instrumentation).
flags=(--sanitizer none)
cargo "${toolchain[@]}" fuzz build "${flags[@]}"

# Longest input per target: what one read, message or frame of the protocol reasonably is.
max_len() {
  case "$1" in
    session | flv) echo 65536 ;;
    relay) echo 16384 ;;
    *) echo 8192 ;;
  esac
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo "${toolchain[@]}" fuzz list); do
  echo "fuzz/smoke.sh: $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  # New inputs go to the scratch directory; the committed corpus is only read.
  log="$scratch/$target.log"
  if ! cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$target" "$scratch/$target" \
    "corpus/$target" -- -max_total_time="$seconds" -max_len="$(max_len "$target")" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz/smoke.sh: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" || true
done
echo "fuzz/smoke.sh: every target ran ${seconds}s without a failure"
