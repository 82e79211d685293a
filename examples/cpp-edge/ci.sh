#!/usr/bin/env bash
# The C/C++ side of the codec, checked end to end: installs what is missing
# (g++, make, libcurl and nlohmann-json from Debian), builds the static
# library and the C++ programs, checks the header is generated from the code,
# and runs every conformance vector through the C ABI from C++.
# Fails loudly on any step. Run from anywhere: examples/cpp-edge/ci.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

examples/cpp-edge/install-deps.sh

target="${CARGO_TARGET_DIR:-target}"
cargo build -p lockstep-codec-c
cargo test -p lockstep-codec-c --test header
make -C examples/cpp-edge LOCKSTEP_LIB_DIR="$(cd "$target/debug" && pwd)"
examples/cpp-edge/build/hello-c
examples/cpp-edge/build/lockstep-cpp-conformance crates/lockstep-codec/conformance
echo "cpp-edge: C ABI, header and C++ conformance OK"
