#!/usr/bin/env bash
# HAProxy for Ray Serve's HTTP ingress (hitmodels/services.py: serve_runtime_env). Optional: without it
# Serve falls back to Ray's Python proxy, which works the same but adds 3-4 ms to every request.
# Installs Debian's package when run as root on a machine with apt-get; otherwise says what to do. Never fails
# the setup that calls it.
set -u
if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing haproxy (Debian package) for Ray Serve's HTTP ingress"
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy) >/dev/null 2>&1; then
    exit 0
  fi
  echo "note: apt-get could not install haproxy; Serve will use Ray's Python proxy"
else
  echo "note: haproxy is not installed (e.g. 'sudo apt-get install haproxy'); Serve will use Ray's Python proxy"
fi
exit 0
