#!/bin/sh
# usage: run.sh <broker-binary> <script.py> [args...]
# Starts the broker (SQLite storage unless STORAGE=memory, free loopback port, scratch
# directory), runs the script with the bootstrap address first, stops the broker. nisshi
# gets --group-initial-rebalance-delay 0s, as the testkit and `cargo xtask up` run it.
set -e
bin=$1; script=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2
port=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
dir=$(mktemp -d)
storage=sqlite://broker.db
[ "${STORAGE:-sqlite}" = memory ] && storage=memory://repro/
extra=
"$bin" --version | grep -q '^nisshi' && extra="--group-initial-rebalance-delay 0s"
(cd "$dir" && exec "$bin" broker --listener-url tcp://127.0.0.1:$port \
    --advertised-listener-url tcp://127.0.0.1:$port --storage-engine $storage $extra \
    > broker.log 2>&1) &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
sleep 2
python3 "$script" 127.0.0.1:$port "$@" 2>&1 | grep -v '^%'
