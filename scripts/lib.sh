# Sourced by the scripts that run groups on loopback (bench-vs-etcd,
# code-layout): installing a tool they need, and picking ports.
# shellcheck shell=bash

# ha_apt_install PACKAGE...: installs from the distribution without
# questions, as root or through `sudo -n`; refreshes the package lists
# only when the first try fails.
ha_apt_install() {
    local sudo_=()
    [ "$(id -u)" -eq 0 ] || sudo_=(sudo -n)
    "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || { "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
             && "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

# ha_free_ports N: N loopback ports nobody listens on now, one per line.
# All N are bound at once, so none repeats (the OS may offer a port again
# as soon as its socket is closed; two members given one port fail).
ha_free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}
