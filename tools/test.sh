#!/bin/sh
# The README's test command: installs what is missing, builds, runs the
# whole test suite (ctest: GoogleTest cases, CLI tests, bounded fuzzing).
set -eu
cd "$(dirname "$0")/.."
./tools/install-deps.sh
./tools/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900
