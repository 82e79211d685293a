#!/usr/bin/env bash
# The C/C++ side of the codec, checked end to end: installs what is missing
# (g++, make, libcurl and nlohmann-json from Debian), builds the static
# library and the C++ programs, checks the header is generated from the code,
# and runs every conformance vector through the C ABI from C++.
# Fails loudly on any step. Run from anywhere: examples/cpp-edge/ci.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

have_header() { echo "#include <$1>" | g++ -std=c++17 -E -x c++ - >/dev/null 2>&1; }
need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if ! command -v g++ >/dev/null 2>&1 || ! have_header curl/curl.h; then need+=(libcurl4-openssl-dev); fi
if ! command -v g++ >/dev/null 2>&1 || ! have_header nlohmann/json.hpp; then need+=(nlohmann-json3-dev); fi
if [ ${#need[@]} -gt 0 ]; then
    echo "cpp-edge: installing ${need[*]}"
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build -p lockstep-codec-c
cargo test -p lockstep-codec-c --test header
make -C examples/cpp-edge LOCKSTEP_LIB_DIR="$(cd "$target/debug" && pwd)"
examples/cpp-edge/build/hello-c
examples/cpp-edge/build/lockstep-cpp-conformance crates/lockstep-codec/conformance
echo "cpp-edge: C ABI, header and C++ conformance OK"
