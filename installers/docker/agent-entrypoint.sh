#!/bin/sh
# The DTF agent image's entrypoint: environment variables become dtf-agent's flags, so that a
# container (docker run -e, a Kubernetes env list) is configured without a command line. Flags
# given as the container's command come after these, and win (argparse keeps the last one).
#
#   DTF_COORDINATOR       --coordinator      the agent endpoint, tcp://HOST:8081 (no mDNS across
#                                            container networks: set it)
#   DTF_JOIN_TOKEN        (read by dtf-agent itself) a token from `dtf token create`
#   DTF_COORDINATOR_KEY   --coordinator-key  the coordinator's public key or fingerprint
#   DTF_WORKER_ID         --worker-id        default: the container's host name + a hash of $DTF_HOME
#   DTF_SLOTS             --slots            tasks at once; default: one per CPU the container sees
#   DTF_TAGS              --tags             comma-separated tags tasks can require
#   DTF_TAG_<NAME>=VALUE  adds the tag <name>=VALUE (name in lower case) when VALUE is not empty:
#                         Kubernetes sets DTF_TAG_NODE from spec.nodeName this way
#   DTF_INSECURE=1        --insecure         plain text, for a coordinator started --insecure
#   DTF_LOG_LEVEL         --log-level        DEBUG, INFO (default), WARNING, ERROR
#   DTF_CONFIG            --config           default /etc/dtf/worker.yaml (the image's)
#   DTF_AGENT             the program run (default dtf-agent; a test points it elsewhere)
set -eu

tags="${DTF_TAGS:-}"
for var in $(env | sed -n 's/^\(DTF_TAG_[A-Za-z0-9_]*\)=.*/\1/p' | sort -u); do
    eval "value=\${$var:-}"
    [ -n "$value" ] || continue  # a downward-API field the cluster does not fill: no "zone=" tag
    name=$(printf '%s' "${var#DTF_TAG_}" | tr '[:upper:]' '[:lower:]')
    tags="${tags:+$tags,}$name=$value"
done

case "${DTF_INSECURE:-}" in
    1|true|yes) insecure=--insecure ;;
    ""|0|false|no) insecure= ;;
    *) echo "dtf-agent entrypoint: DTF_INSECURE=$DTF_INSECURE: use 1 or 0" >&2; exit 2 ;;
esac

# Each ${VAR:+--flag "$VAR"} is the flag and its value as two words, or nothing when VAR is empty.
set -- --config "${DTF_CONFIG:-/etc/dtf/worker.yaml}" \
    ${DTF_COORDINATOR:+--coordinator "$DTF_COORDINATOR"} \
    ${DTF_COORDINATOR_KEY:+--coordinator-key "$DTF_COORDINATOR_KEY"} \
    ${DTF_WORKER_ID:+--worker-id "$DTF_WORKER_ID"} \
    ${DTF_SLOTS:+--slots "$DTF_SLOTS"} \
    ${tags:+--tags "$tags"} \
    ${DTF_LOG_LEVEL:+--log-level "$DTF_LOG_LEVEL"} \
    $insecure "$@"
# exec: the agent takes this shell's place as tini's child and gets the signals tini forwards.
exec "${DTF_AGENT:-dtf-agent}" "$@"
