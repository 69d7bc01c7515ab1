#!/bin/sh
# HAProxy as Ray Serve runs it, with the listeners Ray's config template opens to every interface moved to
# loopback, and its admin socket private. Serve's config template binds the stats page (`bind *:8404`,
# lists every backend and replica) and the Prometheus exporter (`bind :9101`) on all interfaces and creates
# the admin socket mode 666 with level admin; nothing in Ray lets us change that. Serve starts HAProxy as
# `$RAY_SERVE_HAPROXY_BINARY_PATH -db -f CONFIG ...` on every start and reload, so this wrapper (which that
# variable names, see hitmodels/services.py) edits CONFIG in place, then becomes the real HAProxy.
#   HITMUSIC_HAPROXY_REAL  the real binary (set by hitmodels.services.serve_runtime_env)
#   HITMUSIC_HAPROXY_BIND  address for stats/metrics (default 127.0.0.1; a cluster's Prometheus may need more)
real="${HITMUSIC_HAPROXY_REAL:-/usr/sbin/haproxy}"
bind="${HITMUSIC_HAPROXY_BIND:-127.0.0.1}"
cfg=""
prev=""
for a in "$@"; do
    [ "$prev" = "-f" ] && cfg="$a"
    prev="$a"
done
if [ -n "$cfg" ] && [ -f "$cfg" ]; then
    sed -i -E \
        -e "s/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)[[:space:]]*$/\1${bind}:\2/" \
        -e 's/^([[:space:]]*stats socket[[:space:]]+[^[:space:]]+[[:space:]]+mode[[:space:]]+)666/\1600/' \
        "$cfg"
fi
exec "$real" "$@"
