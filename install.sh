#!/bin/sh
# Install, upgrade or remove swarmd: one binary (swarmd, with swarmctl a symlink to it),
# the systemd unit and an example config. Run as root; running it again is safe.
#
#   sudo ./install.sh [--binary PATH] [--join-token TOKEN] [--prefix /usr/local] [--no-start]
#   sudo ./install.sh --uninstall [--purge]
#
# Install / upgrade: PREFIX/bin/swarmd and PREFIX/bin/swarmctl -> swarmd;
# /etc/systemd/system/swarmd.service; /etc/swarmd/swarmd.toml only if there is none;
# with --join-token, /etc/swarmd/join.env (mode 0600), which the unit reads at every
# start (the first start redeems the token with the member that issued it; later starts
# find the cluster's secret or membership in the state dir and take only the token's seeds); then `systemctl enable --now swarmd` (a running node is restarted on the new
# binary). The state dir (/var/lib/swarmd: node id, cluster secret, journal) is never
# touched, so an upgrade keeps the node's identity and cluster.
# Without --binary, a binary is built from this checkout with PyInstaller.
#
# --uninstall stops and disables the service and removes the binary, the symlink and the
# unit; config (/etc/swarmd) and state stay unless --purge is given too.
#
# SWARMD_ROOT=DIR (or --root DIR) installs into a staging tree, like DESTDIR: every path
# is put under DIR and systemctl is never called (tests, packaging).
set -eu

PREFIX=/usr/local
PREFIX_SET=0
BINARY=
TOKEN=
START=1
UNINSTALL=0
PURGE=0
ROOT=${SWARMD_ROOT:-}
SRC=$(cd "$(dirname "$0")" && pwd)
TMP=
BUILT=0
ARGS="$*"

say() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,20s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

need_arg() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
}

while [ $# -gt 0 ]; do
    case $1 in
    --binary) need_arg "$@"; BINARY=$2; shift 2 ;;
    --binary=*) BINARY=${1#*=}; shift ;;
    --join-token) need_arg "$@"; TOKEN=$2; shift 2 ;;
    --join-token=*) TOKEN=${1#*=}; shift ;;
    --prefix) need_arg "$@"; PREFIX=$2; PREFIX_SET=1; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; PREFIX_SET=1; shift ;;
    --root) need_arg "$@"; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --no-start) START=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'install.sh: unknown argument: %s\n\n' "$1" >&2; usage 2 >&2 ;;
    esac
done

[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"
case $PREFIX in
/*) ;;
*) die "--prefix must be an absolute path: $PREFIX" ;;
esac
case $PREFIX in
*[!A-Za-z0-9/._+-]*) die "--prefix may hold only letters, digits and / . _ + -: $PREFIX" ;;
esac
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || PREFIX=/
if [ -n "$ROOT" ]; then
    case $ROOT in
    /*) ;;
    *) ROOT=$(pwd)/$ROOT ;;
    esac
    ROOT=${ROOT%/}
fi
if [ -n "$TOKEN" ]; then
    case $TOKEN in
    swarmd2-* | swarmd1-*) ;;
    *) die "not a swarmd join token (it starts with swarmd2-; get one with \`swarmctl join-token\` on a member)" ;;
    esac
    case ${TOKEN#swarmd[12]-} in
    "" | *[!A-Za-z0-9_=-]*) die "the join token is damaged (copy it again from \`swarmctl join-token\`)" ;;
    esac
fi

# Paths as the running system sees them, and where this script writes them.
BIN=${PREFIX%/}/bin
UNIT_DIR=/etc/systemd/system
UNIT=$UNIT_DIR/swarmd.service
ETC=/etc/swarmd
JOIN_ENV=$ETC/join.env
STATE_DIRS="/var/lib/swarmd /var/lib/private/swarmd"

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run as root: sudo $0 $ARGS"
fi

# systemd manages services here: it is PID 1 and this is no staging install.
systemd_running() {
    [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# The same bytes already there? (install steps skip unchanged files)
same() { [ -f "$2" ] && cmp -s "$1" "$2"; }

# Copy $1 to $2 with mode $3 by a rename in $2's directory: a running binary or a
# reader of the old file never sees half a file.
put() {
    _tmp=$(dirname "$2")/.$(basename "$2").new.$$
    cp "$1" "$_tmp"
    chmod "$3" "$_tmp"
    mv -f "$_tmp" "$2"
}

purge() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        step "purging $1"
        rm -rf "$1"
    fi
}

uninstall() {
    if [ "$PREFIX_SET" = 0 ] && [ -f "$ROOT$UNIT" ]; then
        # the prefix it was installed with: the unit's ExecStart names the binary
        _exec=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$ROOT$UNIT" | head -n 1)
        case $_exec in
        /*/swarmd) BIN=$(dirname "$_exec") ;;
        esac
    fi
    if systemd_running; then
        step "stopping and disabling swarmd.service"
        systemctl disable --now swarmd.service 2>/dev/null || say "    (it was not loaded)"
    fi
    for _f in "$ROOT$UNIT" "$ROOT$BIN/swarmd"; do
        if [ -e "$_f" ]; then
            step "removing $_f"
            rm -f "$_f"
        fi
    done
    if [ -L "$ROOT$BIN/swarmctl" ]; then
        step "removing $ROOT$BIN/swarmctl"
        rm -f "$ROOT$BIN/swarmctl"
    fi
    if [ "$PURGE" = 1 ]; then
        purge "$ROOT$ETC"
        purge "$ROOT$UNIT_DIR/swarmd.service.d"
        for _s in $STATE_DIRS; do purge "$ROOT$_s"; done
        say "swarmd is removed, with its config and state (node id, cluster secret, journal)."
    else
        say "swarmd is removed. Kept: config in $ROOT$ETC and state in $ROOT/var/lib/swarmd" \
            "(node id, cluster secret, journal); --uninstall --purge removes them too."
    fi
    if systemd_running; then
        step "systemctl daemon-reload"
        systemctl daemon-reload
    fi
}

find_pyinstaller() {
    if [ -n "${PYINSTALLER:-}" ]; then
        echo "$PYINSTALLER"
    elif [ -x "$SRC/.venv/bin/pyinstaller" ]; then
        echo "$SRC/.venv/bin/pyinstaller"
    elif command -v pyinstaller >/dev/null 2>&1; then
        command -v pyinstaller
    fi
}

build_binary() {
    [ -f "$SRC/pyinstaller.spec" ] ||
        die "no --binary given, and $SRC is no swarmd checkout to build one from (pyinstaller.spec)"
    _pyi=$(find_pyinstaller)
    [ -n "$_pyi" ] || die "no --binary given and PyInstaller is not installed to build one:
    pass --binary PATH (a built swarmd binary), or install PyInstaller
    (python3 -m venv .venv && .venv/bin/pip install . pyinstaller) and run this again"
    TMP=$(mktemp -d)
    step "building the binary with $_pyi (about a minute)"
    (cd "$SRC" && "$_pyi" --noconfirm --log-level ERROR --distpath "$TMP/dist" \
        --workpath "$TMP/build" pyinstaller.spec) || die "the PyInstaller build failed"
    BINARY=$TMP/dist/swarmd
    BUILT=1
}

install() {
    _unit_src=$SRC/systemd/swarmd.service
    _conf_src=$SRC/systemd/swarmd.toml.example
    [ -f "$_unit_src" ] || die "missing $_unit_src (run install.sh from a swarmd checkout or release)"
    [ -f "$_conf_src" ] || die "missing $_conf_src (run install.sh from a swarmd checkout or release)"
    if [ -z "$BINARY" ]; then
        build_binary
    fi
    [ -f "$BINARY" ] || die "--binary $BINARY: no such file"
    # check (and later install) a private copy: the same bytes that were checked
    TMP=${TMP:-$(mktemp -d)}
    if [ "$BUILT" = 1 ]; then
        _given="the binary built from $SRC"
    else
        cp "$BINARY" "$TMP/swarmd"
        chmod 0755 "$TMP/swarmd"
        _given=$BINARY
        BINARY=$TMP/swarmd
    fi
    _version=$("$BINARY" --version 2>&1) || die "$_given --version failed: $_version"
    case $_version in
    swarmd*) ;;
    *) die "$_given is not a swarmd binary (--version said: $_version)" ;;
    esac
    step "installing $_version"

    mkdir -p "$ROOT$BIN"
    if same "$BINARY" "$ROOT$BIN/swarmd"; then
        step "$ROOT$BIN/swarmd: unchanged"
        _new_binary=0
    else
        step "installing $_given as $ROOT$BIN/swarmd"
        put "$BINARY" "$ROOT$BIN/swarmd" 0755
        _new_binary=1
    fi
    if [ "$(readlink "$ROOT$BIN/swarmctl" 2>/dev/null || true)" != swarmd ]; then
        step "linking $ROOT$BIN/swarmctl -> swarmd"
        rm -f "$ROOT$BIN/swarmctl"
        ln -s swarmd "$ROOT$BIN/swarmctl"
    fi

    # The unit: ExecStart (and any other /usr/local/bin path) follows --prefix; it reads
    # the join token from $JOIN_ENV if the file exists.
    sed "s|/usr/local/bin/|$BIN/|g" "$_unit_src" >"$TMP/swarmd.service"
    if ! grep -q "^EnvironmentFile=-\{0,1\}$JOIN_ENV\$" "$TMP/swarmd.service"; then
        awk -v line="EnvironmentFile=-$JOIN_ENV" \
            '{ print } /^\[Service\]/ && !done { print line; done = 1 }' \
            "$TMP/swarmd.service" >"$TMP/swarmd.service.env"
        mv "$TMP/swarmd.service.env" "$TMP/swarmd.service"
    fi
    mkdir -p "$ROOT$UNIT_DIR"
    if same "$TMP/swarmd.service" "$ROOT$UNIT"; then
        step "$ROOT$UNIT: unchanged"
        _new_unit=0
    else
        step "installing the unit $ROOT$UNIT (ExecStart=$BIN/swarmd run)"
        put "$TMP/swarmd.service" "$ROOT$UNIT" 0644
        _new_unit=1
    fi

    mkdir -p "$ROOT$ETC"
    chmod 0755 "$ROOT$ETC"
    if [ -e "$ROOT$ETC/swarmd.toml" ]; then
        step "$ROOT$ETC/swarmd.toml exists: kept as it is"
    else
        step "installing the example config as $ROOT$ETC/swarmd.toml"
        put "$_conf_src" "$ROOT$ETC/swarmd.toml" 0644
    fi
    if [ -n "$TOKEN" ]; then
        step "writing the join token to $ROOT$JOIN_ENV (mode 0600)"
        (
            umask 077
            printf '# read by swarmd.service (EnvironmentFile=); written by install.sh\nSWARMD_JOIN_TOKEN=%s\n' \
                "$TOKEN" >"$ROOT$JOIN_ENV.new.$$"
        )
        chmod 0600 "$ROOT$JOIN_ENV.new.$$"
        mv -f "$ROOT$JOIN_ENV.new.$$" "$ROOT$JOIN_ENV"
        _new_token=1
    else
        _new_token=0
    fi
    for _s in $STATE_DIRS; do
        if [ -e "$ROOT$_s/node_id" ]; then
            step "state in $ROOT$_s kept (node id $(cat "$ROOT$_s/node_id"), cluster secret, journal)"
            break
        fi
    done

    if ! systemd_running; then
        if [ -n "$ROOT" ]; then
            say "Installed into $ROOT; systemctl was not called."
        else
            say "Installed. systemd is not running here; start the node by hand:"
            if [ -f "$JOIN_ENV" ]; then
                # shellcheck disable=SC2016 # printed for the user to run, unexpanded
                say "    $BIN/swarmd run --state-dir /var/lib/swarmd" \
                    '--join-token "$(sed -n "s/^SWARMD_JOIN_TOKEN=//p" '"$JOIN_ENV"')"'
            else
                say "    $BIN/swarmd run --state-dir /var/lib/swarmd"
            fi
        fi
        return
    fi
    step "systemctl daemon-reload"
    systemctl daemon-reload
    if [ "$START" = 0 ]; then
        say "Installed, not started (--no-start). Start it with:"
        say "    systemctl enable --now swarmd"
        if [ "$_new_binary$_new_unit$_new_token" != 000 ] &&
            systemctl is-active --quiet swarmd.service; then
            say "swarmd is running the old files still: systemctl restart swarmd"
        fi
        return
    fi
    if systemctl is-active --quiet swarmd.service; then
        if [ "$_new_binary$_new_unit$_new_token" != 000 ]; then
            step "restarting swarmd.service on the new files (state is kept)"
            systemctl restart swarmd.service
        else
            step "swarmd.service is running and nothing changed"
        fi
        systemctl enable swarmd.service
    else
        step "systemctl enable --now swarmd"
        systemctl enable --now swarmd.service
    fi
    systemctl --no-pager --lines=0 status swarmd.service || true
    say "swarmd is running. See the cluster: swarmctl --state-dir /var/lib/swarmd peers"
    say "Logs: journalctl -u swarmd -f"
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
else
    install
fi
