#!/usr/bin/env bash
# The CI recipe in one script: start the service under test, wait until it answers, run the
# harness against it, stop the service, and exit with the harness's exit code.
#
#   examples/ci/gate.sh HARNESS_COMMAND [ARGS...]
#
# e.g.
#   SERVICE_START_CMD='python -m reference --port 8787' TARGET_URL=http://127.0.0.1:8787 \
#   REPORT_DIR=conformance-report \
#   examples/ci/gate.sh harness conformance --target "$TARGET_URL" --dsn "$HARNESS_DSN" \
#       --provider-listen 127.0.0.1:9099 --report "$REPORT_DIR"
#
# The arguments are the harness command line, run as given: the same line runs by hand, in a
# workflow and from a test. Exit code: the harness's own (0 all valid, 1 a property invalid,
# 2 usage or configuration error, 3 inconclusive, 4 target or environment unreachable,
# 130 interrupted); the script itself exits 2 on its own usage errors and 4 when the service
# exits or does not answer in time.
#
# Environment:
#   TARGET_URL         (required) the service's base URL, as passed to --target
#   SERVICE_START_CMD  a shell command that runs the service in the foreground; empty: the
#                      service is already running (a staging deployment) and only waited for
#   READY_URL          probed until it answers (default: TARGET_URL); any status below 500
#                      counts as up (a 404 at / is fine; a 503 while warming up is not)
#   READY_TIMEOUT_S    how long to wait for it (default 60)
#   STOP_TIMEOUT_S     how long the service gets to stop on SIGTERM before SIGKILL (default 15)
#   REPORT_DIR         the harness's --report folder (default conformance-report); used here
#                      only to say where the reports are, and to leave a line in the job's step
#                      summary when the harness stopped before writing any (preflight failure)
#   SERVICE_LOG        the service's stdout and stderr (default: service.log in the current
#                      directory)
#   HARNESS_TOKEN, HARNESS_OTHER_TOKEN, HARNESS_DSN are read by the harness itself; the
#   service inherits this environment too (its DATABASE_URL, PROVIDER_BASE_URL, ...).
#   The harness appends REPORT_DIR/summary.md to $GITHUB_STEP_SUMMARY by itself when that is
#   set; this script does not append it again.

set -u

die() {
    echo "gate.sh: $*" >&2
    exit "${2:-2}"
}

[ "$#" -ge 1 ] || die "usage: gate.sh HARNESS_COMMAND [ARGS...]  (e.g. gate.sh harness conformance --target \"\$TARGET_URL\" ...)"
[ -n "${TARGET_URL:-}" ] || die "TARGET_URL is not set (the service's base URL, as given to --target)"
command -v curl >/dev/null 2>&1 || die "curl is needed to wait for the service"

READY_URL="${READY_URL:-$TARGET_URL}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-60}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-15}"
REPORT_DIR="${REPORT_DIR:-conformance-report}"
SERVICE_LOG="${SERVICE_LOG:-service.log}"
SERVICE_PID=""

case "$READY_TIMEOUT_S$STOP_TIMEOUT_S" in
    *[!0-9]*) die "READY_TIMEOUT_S and STOP_TIMEOUT_S must be whole seconds" ;;
esac

service_alive() {
    # bash reaps an exited background job as it ends, so kill -0 fails once it is gone.
    [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null
}

stop_service() {
    [ -n "$SERVICE_PID" ] || return 0
    if service_alive; then
        # The service runs in its own process group (set -m below): signal the whole group,
        # so a start command that forks (a wrapper script, a process manager) stops entirely.
        kill -TERM -- "-$SERVICE_PID" 2>/dev/null || kill -TERM "$SERVICE_PID" 2>/dev/null
        deadline=$((SECONDS + STOP_TIMEOUT_S))
        while service_alive && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if service_alive; then
            echo "gate.sh: the service did not stop within ${STOP_TIMEOUT_S} s of SIGTERM; killing it" >&2
            kill -KILL -- "-$SERVICE_PID" 2>/dev/null || kill -KILL "$SERVICE_PID" 2>/dev/null
        fi
    fi
    wait "$SERVICE_PID" 2>/dev/null
    SERVICE_PID=""
}

service_failed() {
    # $1: what went wrong. Show the end of the service's log and exit 4 (unreachable).
    echo "gate.sh: $1; the last lines of $SERVICE_LOG:" >&2
    tail -n 40 "$SERVICE_LOG" >&2 2>/dev/null
    stop_service
    exit 4
}

trap 'stop_service' EXIT
trap 'stop_service; exit 130' INT
trap 'stop_service; exit 143' TERM

# -- 1. start the service ------------------------------------------------------------------------
if [ -n "${SERVICE_START_CMD:-}" ]; then
    echo "gate.sh: starting the service: $SERVICE_START_CMD (log: $SERVICE_LOG)" >&2
    : >"$SERVICE_LOG" || die "cannot write SERVICE_LOG=$SERVICE_LOG"
    set -m  # its own process group, to stop it whole
    bash -c "$SERVICE_START_CMD" >>"$SERVICE_LOG" 2>&1 </dev/null &
    SERVICE_PID=$!
    set +m
fi

# -- 2. wait until it answers ------------------------------------------------------------------
deadline=$((SECONDS + READY_TIMEOUT_S))
while :; do
    if [ -n "${SERVICE_START_CMD:-}" ] && ! service_alive; then
        wait "$SERVICE_PID" 2>/dev/null
        status=$?
        SERVICE_PID=""
        service_failed "the service exited with status $status before it answered at $READY_URL"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 ${CURL_INSECURE:+-k} "$READY_URL" 2>/dev/null)"
    case "$code" in
        [1-4][0-9][0-9]) break ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        [ -n "${SERVICE_START_CMD:-}" ] \
            || die "the target did not answer at $READY_URL within ${READY_TIMEOUT_S} s (last status: ${code:-none})" 4
        service_failed "the service did not answer at $READY_URL within ${READY_TIMEOUT_S} s (last status: ${code:-none})"
    fi
    sleep 0.2  # not up yet: probe again shortly (bounded by READY_TIMEOUT_S)
done
echo "gate.sh: the service answers at $READY_URL (HTTP $code)" >&2

# -- 3. run the harness, keeping its exit code ---------------------------------------------------
shown=""
hide_next=0
for arg in "$@"; do  # the command line as run, without the values of secret-bearing flags
    if [ "$hide_next" = 1 ]; then
        arg="***"
        hide_next=0
    else
        case "$arg" in
            --token | --other-token | --dsn) hide_next=1 ;;
            --token=* | --other-token=* | --dsn=*) arg="${arg%%=*}=***" ;;
        esac
    fi
    shown="$shown $arg"
done
echo "gate.sh: running:$shown" >&2
"$@"
harness_code=$?

# -- 4. stop the service, say where things are, exit with the harness's code -----------------------
stop_service
trap - EXIT INT TERM

if [ -f "$REPORT_DIR/summary.md" ]; then
    echo "gate.sh: reports in $REPORT_DIR (summary.md, report.json, junit.xml, report.html)" >&2
else
    note="the harness exited $harness_code before writing any report (a preflight or configuration failure: see the step's log)"
    echo "gate.sh: $note" >&2
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        printf '### raceharness\n\n%s.\n' "$note" >>"$GITHUB_STEP_SUMMARY"
    fi
fi
case "$harness_code" in
    0) meaning="all properties valid" ;;
    1) meaning="a property is invalid: the service has a bug (see the report)" ;;
    2) meaning="usage or configuration error" ;;
    3) meaning="inconclusive: some property unknown, none invalid" ;;
    4) meaning="target or environment unreachable" ;;
    130) meaning="interrupted" ;;
    *) meaning="unexpected" ;;
esac
echo "gate.sh: harness exit code $harness_code ($meaning)" >&2
exit "$harness_code"
