#!/bin/sh
# HAProxy as Ray Serve runs it, with the listeners Ray's config template opens to every interface moved to
# loopback, and its admin socket private. Serve's config template binds the stats page (`bind *:8404`,
# lists every backend and replica) and the Prometheus exporter (`bind :9101`) on all interfaces and creates
# the admin socket mode 666 with level admin; nothing in Ray lets us change that. Serve starts HAProxy as
# `$RAY_SERVE_HAPROXY_BINARY_PATH -db -f CONFIG ...` on every start and reload, so this wrapper (which that
# variable names, see hitmodels/services.py) edits CONFIG in place, then becomes the real HAProxy.
#   HITMUSIC_HAPROXY_REAL  the real binary (set by hitmodels.services.serve_runtime_env)
#   HITMUSIC_HAPROXY_BIND  address for stats/metrics (default 127.0.0.1; a cluster's Prometheus may need more)
#   HITMUSIC_HAPROXY_FAIL_FAST=1  no backup route through Ray's Python proxy, and HAProxy's own status codes:
#       with every replica of an app down, a request then gets HAProxy's 503 at once. Serve's template sends it
#       to the Python proxy instead, which holds it until a replica is back (15-40 s for ours, longer than
#       clients wait), and rewrites HAProxy's 502/503/504 into 500, which says "a bug" to a client.
# Fails closed: a config it cannot make private (a bind address that is not an IP, a template that changed
# shape) stops HAProxy from starting rather than listening on every interface.
real="${HITMUSIC_HAPROXY_REAL:-/usr/sbin/haproxy}"
bind="${HITMUSIC_HAPROXY_BIND:-127.0.0.1}"
case "$bind" in
    *[!0-9.]*) case "$bind" in \[*\]) ;; *) echo "haproxy_loopback: HITMUSIC_HAPROXY_BIND=$bind is not an IPv4 address or [IPv6]" >&2; exit 1 ;; esac ;;
esac
cfg=""
prev=""
for a in "$@"; do
    [ "$prev" = "-f" ] && cfg="$a"
    prev="$a"
done
if [ -n "$cfg" ] && [ -f "$cfg" ]; then
    if [ "${HITMUSIC_HAPROXY_FAIL_FAST:-0}" = "1" ]; then
        sed -i -E \
            -e '/^[[:space:]]*server[[:space:]]+SERVE_PROXY_ACTOR-fallback-[^[:space:]]+[[:space:]].*[[:space:]]backup[[:space:]]*$/d' \
            -e '/^[[:space:]]*errorfile[[:space:]]+50[234][[:space:]]/d' \
            "$cfg" || exit 1
    fi
    sed -i -E \
        -e "s/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)[[:space:]]*$/\1${bind}:\2/" \
        -e 's/^([[:space:]]*stats socket[[:space:]]+[^[:space:]]+[[:space:]]+mode[[:space:]]+)666/\1600/' \
        "$cfg" || exit 1
    if [ "$bind" = "127.0.0.1" ] && grep -Eq '^[[:space:]]*bind[[:space:]]+\*?:[0-9]+' "$cfg"; then
        echo "haproxy_loopback: $cfg still binds a port without an address (every interface); not starting" >&2
        exit 1
    fi
    if grep -Eq 'stats socket.* mode 6[0-7][2367]' "$cfg"; then
        echo "haproxy_loopback: $cfg still has a world-writable admin socket; not starting" >&2
        exit 1
    fi
fi
exec "$real" "$@"
