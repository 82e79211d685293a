#!/usr/bin/env bash
# Installs what the C/C++ edge needs and is missing: g++, make, libcurl and
# nlohmann-json from Debian. Used by ci.sh and by scripts/test.sh (the
# end-to-end tests build the C++ edge). Fails loudly if it cannot.
set -euo pipefail

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

