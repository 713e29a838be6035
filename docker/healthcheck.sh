#!/bin/bash
# The image's HEALTHCHECK: GET <path> (default /healthz; compose asks /readyz) on the admin
# port of the service this container runs (found from its command line), or of ADMIN_ADDR
# when set. A container running `trib` has no admin port and is healthy while it runs.
# Bash, not sh: it needs /dev/tcp.
set -eu
port=""
if [ -n "${ADMIN_ADDR:-}" ]; then
    port="${ADMIN_ADDR##*:}"
else
    for word in $(tr '\0' ' ' < /proc/1/cmdline); do
        case "$word" in
            ingest) port=9101 ;;
            enrichment) port=9102 ;;
            aggregation) port=9103 ;;
            search-indexer) port=9104 ;;
            metrics-emitter) port=9105 ;;
        esac
    done
fi
[ -z "$port" ] && exit 0
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET %s HTTP/1.0\r\n\r\n' "${1:-/healthz}" >&3
grep -q ' 200 ' <&3
