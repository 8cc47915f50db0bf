#!/bin/sh
# Capture again what the host programs print, into the case folders beside this script
# (README.md says which case holds which output). Run as root from the repository root:
#
#     sudo tests/data/parsers/capture.sh
#
# Everything happens in two network namespaces made here and deleted on exit; the host's own
# network is never touched. The devices, addresses, routes, nft tables and sockets are the
# ones a vmm host has (made with the same commands vmm runs), plus the odd ones vmm must read
# past. After a capture, regenerate and review the expected facts:
#
#     .venv/bin/python -m tests.unit.test_parsers_data --show CASE   # compare by eye
#     .venv/bin/python -m tests.unit.test_parsers_data --write CASE  # then accept
set -eu

HERE=$(dirname "$0")
PY=${PY:-.venv/bin/python}
NS=vmmcap-$$
PEER=vmmcap-peer-$$

cleanup() {
    ip netns del "$NS" 2>/dev/null || true
    ip netns del "$PEER" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$NS"
ip netns add "$PEER"
in_ns() { ip netns exec "$NS" "$@"; }

# The empty namespace first: what nft says when there is no table at all.
in_ns nft -j list ruleset >"$HERE/nft-empty/nft-j-list-ruleset.json"

# -- devices: vmm's bridge and TAPs (the commands of vmm.network.links), and others ----------
in_ns ip link set lo up
in_ns ip link add name vmm-br0 address 06:00:ac:10:00:01 type bridge
in_ns ip addr add 172.16.0.1/16 dev vmm-br0
in_ns ip link set dev vmm-br0 up
for tap in vmm-0a1b2c3d vmm-4e5f6a7b; do
    in_ns ip tuntap add dev "$tap" mode tap
    in_ns ip link set dev "$tap" master vmm-br0 up
done
in_ns ip link set dev vmm-4e5f6a7b type bridge_slave hairpin on
in_ns ip tuntap add dev tap-lone mode tap            # a TAP on no bridge, down
in_ns ip tuntap add dev tun-x mode tun               # a TUN: not a TAP
# an uplink: a veth whose peer is in another namespace (link_netnsid), default route through it
in_ns ip link add uplink0 type veth peer name peer0 netns "$PEER"
in_ns ip addr add 10.200.0.1/24 dev uplink0
in_ns ip link set uplink0 up
ip netns exec "$PEER" ip link set peer0 up
in_ns ip route add default via 10.200.0.2 dev uplink0
in_ns ip route add 10.50.0.0/16 via 10.200.0.2 dev uplink0 metric 50
in_ns ip route add blackhole 192.168.77.0/24
# a device with alternative names, a dotted macvlan on it, IPv4 and IPv6, up without carrier
# (its peer is down: its route is "linkdown"). veth and macvlan: the kernel this was captured
# on has neither dummy nor 8021q devices.
in_ns ip link add lan0 type veth peer name lan0-peer
in_ns ip link property add dev lan0 altname a-long-alternative-name-for-lan0
in_ns ip link property add dev lan0 altname lanalt
in_ns ip addr add 10.9.9.9/32 dev lan0
in_ns ip addr add fd00::9/64 dev lan0 nodad
in_ns ip link set lan0 up
in_ns ip route add 10.9.9.0/24 dev lan0
in_ns ip link add link lan0 name lan0.100 type macvlan mode bridge
# a device with IPv6 addresses only
in_ns ip link add v6only type veth peer name v6only-peer
in_ns ip addr add 2001:db8::1/64 dev v6only nodad
in_ns ip link set v6only up
in_ns ip link set v6only-peer up

in_ns ip -j -d link show >"$HERE/ip-link-detailed/ip-j-d-link-show.json"
in_ns ip -j link show >"$HERE/ip-link-plain/ip-j-link-show.json"
in_ns ip -j -4 addr show >"$HERE/ip-addr-ipv4/ip-j-4-addr-show.json"
in_ns ip -j -d addr show >"$HERE/ip-devices/ip-j-d-addr-show.json"
in_ns ip -j -4 route show >"$HERE/ip-route/ip-j-4-route-show.json"

# -- nft: vmm's table, a Docker-like filter table with DOCKER-USER, another tool's table ------
"$PY" -c '
from ipaddress import IPv4Address as A, IPv4Network as N
from vmm.network import firewall as f
print(f.render_ruleset(f.FirewallSpec("vmm-br0", N("172.16.0.0/16"), forwards=(
    f.PortForward(8080, A("172.16.0.2"), 80),
    f.PortForward(5353, A("172.16.0.3"), 53, "udp", A("127.0.0.1")),
    f.PortForward(2222, A("172.16.0.2"), 22, "tcp", A("10.200.0.1")),
))), end="")' | in_ns nft -f -
in_ns nft -f - <<'EOF'
table ip filter {
    chain DOCKER-USER {
        return
    }
    chain FORWARD {
        type filter hook forward priority 0; policy drop;
        jump DOCKER-USER
    }
}
table inet fw {
    chain fw_forward {
        type filter hook forward priority 10; policy drop;
        ct state established,related accept
    }
    chain fw_input {
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
    }
}
table ip6 other {
    chain other_forward {
        type filter hook forward priority 0; policy drop;
    }
}
EOF
# vmm's two accepts, as vmm.network.coexist.ensure_forward_allowed inserts them
for d in oifname iifname; do
    in_ns nft insert rule ip filter DOCKER-USER "$d" '"vmm-br0"' accept comment '"vmm"'
done

in_ns nft -j list ruleset >"$HERE/nft-ruleset/nft-j-list-ruleset.json"
in_ns nft -j list chains >"$HERE/nft-chains/nft-j-list-chains.json"
in_ns nft -j list chain ip filter DOCKER-USER >"$HERE/nft-docker-user/nft-j-list-chain.json"
in_ns nft -j list table ip vmm >"$HERE/nft-vmm-table/nft-j-list-table-ip-vmm.json"
in_ns nft -j list tables ip >"$HERE/nft-tables/nft-j-list-tables-ip.json"

# -- /proc/net: listening and connected sockets of every kind vmm tells apart -----------------
in_ns python3 - "$HERE" <<'EOF'
import socket, sys
here = sys.argv[1]
keep = []
def tcp(family, addr, port, v6only=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((addr, port)); s.listen(); keep.append(s); return s
def udp(family, addr, port):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((addr, port)); keep.append(s); return s
tcp(socket.AF_INET, "0.0.0.0", 8080)
tcp(socket.AF_INET, "127.0.0.1", 2222)
tcp(socket.AF_INET, "172.16.0.1", 5432)
tcp(socket.AF_INET6, "::", 8443, v6only=0)              # IPv4 too
tcp(socket.AF_INET6, "::1", 9000, v6only=1)
tcp(socket.AF_INET6, "::ffff:127.0.0.1", 7000, v6only=0)  # an IPv4-mapped address
tcp(socket.AF_INET6, "2001:db8::1", 9100, v6only=1)      # nodad: usable at once
# an established connection each way (state 01, not listeners)
c = socket.create_connection(("127.0.0.1", 2222)); keep.append(c)
keep.append(keep[1].accept()[0])
c6 = socket.create_connection(("::1", 9000)); keep.append(c6)
keep.append(keep[4].accept()[0])
udp(socket.AF_INET, "0.0.0.0", 53)
udp(socket.AF_INET, "127.0.0.1", 5353)
u = udp(socket.AF_INET, "127.0.0.1", 0); u.connect(("127.0.0.1", 53))  # a connected client
udp(socket.AF_INET6, "::", 5355)
udp(socket.AF_INET6, "::1", 6000)
for name in ("tcp", "tcp6", "udp", "udp6"):
    with open(f"/proc/net/{name}") as f, open(f"{here}/proc-net-{name}/{name}", "w") as out:
        out.write(f.read())
EOF
echo "captured into $HERE"
