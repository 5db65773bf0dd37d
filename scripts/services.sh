#!/usr/bin/env bash
# Makes sure the servers the tests talk to are up on 127.0.0.1: Redis on 6379 and NATS with
# JetStream on 4222. A server already listening is left alone; a missing one is installed
# from Debian's packages (apt-get, as root or through sudo) and started, bound to loopback.
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

if ! listening 4222; then
    command -v nats-server >/dev/null || install nats-server
    mkdir -p "$state/nats"
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$state/nats" -l "$state/nats.log" >/dev/null 2>&1 &
    wait_for NATS 4222
fi
echo "services: Redis on 127.0.0.1:6379 and NATS (JetStream) on 127.0.0.1:4222 are up" >&2
