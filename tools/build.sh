#!/bin/sh
# Configures and builds blkrep into build/ (the program lands in
# build/bin/blkrep). Extra arguments go to cmake's configure step.
set -eu
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build build -j "$(nproc)"
