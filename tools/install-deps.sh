#!/bin/sh
# Installs the Debian 12 packages blkrep needs to build and test, only those
# missing. Runs as root (CI and a fresh machine); prints what it installs.
set -eu

packages="g++ cmake make pkg-config
  liburing-dev libblkid-dev libzstd-dev libxxhash-dev
  libprotobuf-dev protobuf-compiler libsqlite3-dev libssl-dev openssl openssh-client
  libgtest-dev libgmock-dev nlohmann-json3-dev libnbd-dev
  e2fsprogs util-linux xxd tzdata
  qemu-utils rsync libnbd-bin python3-libnbd python3-prometheus-client nbdfuse fuse3 fio"

missing=""
for p in $packages; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing="$missing $p"
  fi
done

if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # shellcheck disable=SC2086
  apt-get install -y --no-install-recommends $missing
fi
