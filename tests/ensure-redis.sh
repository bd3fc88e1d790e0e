#!/usr/bin/env bash
# Makes sure the limit tests have Redis: the one at WARDEN_TEST_REDIS_URL, or
# one on 127.0.0.1:6379, or one started here (its files under $TARGET).
# redis-server and redis-cli are installed if missing: some tests start
# private servers, and a three-node cluster.
set -euo pipefail
target="${TARGET:-target}"

redis_ping() {
    # PING over bash's /dev/tcp: no redis-cli needed.
    local reply
    { exec 3<>"/dev/tcp/127.0.0.1/6379"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    [[ "$reply" == +PONG* ]]
}
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "==> installing redis-server (and redis-cli, which builds the test cluster)"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    fi
fi
if [ -z "${WARDEN_TEST_REDIS_URL:-}" ] && ! redis_ping; then
    echo "==> starting redis-server on 127.0.0.1:6379"
    mkdir -p "$target"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir "$(realpath -m "$target")" --logfile "$(realpath -m "$target")/redis.log"
    for _ in $(seq 1 100); do redis_ping && break; sleep 0.1; done
    redis_ping || { echo "redis-server did not start; see $target/redis.log" >&2; exit 1; }
fi

