# Sourced by scripts/demo, scripts/test and .ci/run: installs what building
# ha needs and is missing — a C++ compiler and libclang (RocksDB, via
# bindgen) and protoc (raft's prost codec) — and etcdctl (the etcd
# gateway's tests) without asking questions.
# shellcheck shell=bash

ha_missing=()
command -v c++ >/dev/null 2>&1 || ha_missing+=(g++)
command -v clang >/dev/null 2>&1 || ha_missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 \
    && ! ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
    ha_missing+=(libclang-dev)
fi
command -v protoc >/dev/null 2>&1 || ha_missing+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto), which the etcd-client
# crate's protos import: a recommendation of protobuf-compiler, so not
# installed with it below (--no-install-recommends).
[ -f /usr/include/google/protobuf/descriptor.proto ] || ha_missing+=(libprotobuf-dev)
# etcdctl: the etcd gateway's tests drive it as an independent client.
command -v etcdctl >/dev/null 2>&1 || ha_missing+=(etcd-client)

if [ "${#ha_missing[@]}" -gt 0 ]; then
    echo "installing build prerequisites: ${ha_missing[*]}" >&2
    if [ "$(id -u)" -eq 0 ]; then
        ha_sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        ha_sudo=(sudo -n)
    else
        echo "need root (or sudo) to install: ${ha_missing[*]}" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "no apt-get here; install these yourself: ${ha_missing[*]}" >&2
        exit 1
    fi
    "${ha_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${ha_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${ha_missing[@]}" >/dev/null
fi
unset ha_missing ha_sudo
