#!/usr/bin/env bash
# mes-kiosk -- Chromium kiosk launcher for an open-mes shop-floor panel.
#
# Runs Chromium full-screen on the MES kiosk page for this terminal and
# restarts it whenever it exits (crash, Alt+F4, OOM kill). Meant to be
# started by the desktop session of an unprivileged auto-login user, see
# mes-kiosk.desktop. Needs Debian's `chromium` and `fonts-noto-cjk`; uses xset and xrandr
# (x11-xserver-utils), curl, unclutter and logger when they are installed.
#
# Install:
#   install -m 0755 mes-kiosk.sh /usr/local/bin/mes-kiosk
#   install -m 0644 mes-kiosk.desktop /etc/xdg/autostart/mes-kiosk.desktop
#   install -d /etc/chromium/policies/managed
#   install -m 0644 chromium-policy.json /etc/chromium/policies/managed/mes-kiosk.json
#   (edit its URLAllowlist to the MES address first: everything else is blocked)
#   The plant CA must be trusted by Chromium (NSS), never bypassed with
#   --ignore-certificate-errors.
#
# Configuration: environment variables, or KEY=VALUE lines in
# /etc/mes/kiosk.env (MES_KIOSK_CONFIG); the environment wins.
#   MES_KIOSK_URL        kiosk page, required, e.g.
#                        https://mes.plant-01.example/kiosk/
#                        "{terminal}" in it is replaced by the terminal id (the
#                        MES itself knows the terminal from its enrolment
#                        cookie, see OPERATIONS.md §10).
#   MES_TERMINAL_ID      terminal id (default: host name); [A-Za-z0-9._-] only
#   MES_KIOSK_BROWSER    browser binary (default: chromium, chromium-browser)
#   MES_KIOSK_WAIT_SECONDS  wait this long for the server's /healthz before
#                        launching (default 60; Chromium retries by itself after)
#   MES_KIOSK_EXTRA_FLAGS   extra Chromium flags, space separated
#                        (e.g. "--kiosk-printing --force-device-scale-factor=1.25")

set -uo pipefail   # no -e: the restart loop must survive failing commands

readonly PROG=mes-kiosk
readonly CONFIG=${MES_KIOSK_CONFIG:-/etc/mes/kiosk.env}

log() {
    printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PROG" "$*" >&2
    if command -v logger >/dev/null 2>&1; then
        logger -t "$PROG" -- "$*" 2>/dev/null || true
    fi
}

die() {
    log "FATAL: $*"
    exit 1
}

# Read KEY=VALUE lines from the config file without executing it; only
# MES_KIOSK_* / MES_TERMINAL_ID keys, and only where the environment has none.
load_config() {
    local line key value
    [[ -r $CONFIG ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ $line =~ ^[[:space:]]*(MES_KIOSK_[A-Z_]+|MES_TERMINAL_ID)=(.*)$ ]]; then
            key=${BASH_REMATCH[1]}
            value=${BASH_REMATCH[2]}
            # strip one pair of surrounding quotes
            if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
                value=${BASH_REMATCH[1]}
            fi
            if [[ -z ${!key+set} ]]; then
                printf -v "$key" '%s' "$value"
                export "${key?}"
            fi
        else
            log "ignoring line in $CONFIG: $line"
        fi
    done <"$CONFIG"
}

find_browser() {
    local candidate
    for candidate in ${MES_KIOSK_BROWSER:-} chromium chromium-browser; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# Keep the panel on: no screen saver, no blanking, no DPMS power-off (X11).
# Called after the browser has connected: an X server without a session
# manager resets these settings when its last client disconnects.
XSET_WARNED=
screen_always_on() {
    if [[ -n ${DISPLAY:-} ]] && command -v xset >/dev/null 2>&1; then
        # Separate calls: one xset invocation stops at the first option the
        # X server rejects (e.g. -dpms without the DPMS extension).
        if ! { xset s off && xset s noblank; }; then
            log "xset failed; screen blanking may stay on"
        fi
        xset -dpms 2>/dev/null || true
    elif [[ -z $XSET_WARNED ]]; then
        log "xset not available (Wayland or not installed); disable blanking in the session settings"
        XSET_WARNED=1
    fi
}

# Size of the X screen as WxH, empty if unknown. Passed as the window size so
# that Chromium also covers the whole panel in a bare X session without a
# window manager (xinit); with a window manager --kiosk does it anyway.
screen_size() {
    local line
    [[ -n ${DISPLAY:-} ]] || return 0
    if command -v xrandr >/dev/null 2>&1; then
        line=$(xrandr --current 2>/dev/null | head -n 1)
        if [[ $line =~ current\ ([0-9]+)\ x\ ([0-9]+) ]]; then
            printf '%sx%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
            return 0
        fi
    fi
    if command -v xdpyinfo >/dev/null 2>&1; then
        line=$(xdpyinfo 2>/dev/null | grep -m 1 'dimensions:')
        if [[ $line =~ ([0-9]+)x([0-9]+)\ pixels ]]; then
            printf '%sx%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
        fi
    fi
}

# Touch panel: hide the mouse pointer when it is not moving.
hide_pointer() {
    if [[ -n ${DISPLAY:-} ]] && command -v unclutter >/dev/null 2>&1; then
        unclutter -idle 1 -root >/dev/null 2>&1 &
        UNCLUTTER_PID=$!
    fi
}

# Give the server a chance to come up (panel boots faster than the MES after
# a plant-wide power cut). Launch anyway after the timeout: Chromium's error
# page reloads itself once the server answers.
wait_for_server() {
    local origin deadline
    command -v curl >/dev/null 2>&1 || return 0
    [[ $KIOSK_URL =~ ^(https?://[^/?#]+) ]] || return 0
    origin=${BASH_REMATCH[1]}
    deadline=$((SECONDS + ${MES_KIOSK_WAIT_SECONDS:-60}))
    until curl -fsS -o /dev/null --max-time 3 "$origin/healthz" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$origin/healthz not reachable; starting the browser anyway"
            return 0
        fi
        sleep 2
    done
}

BROWSER_PID=
UNCLUTTER_PID=
SLEEP_PID=
PROFILE_DIR=

cleanup_profile() {
    if [[ -n $PROFILE_DIR && -d $PROFILE_DIR ]]; then
        rm -rf -- "$PROFILE_DIR"
    fi
    PROFILE_DIR=
}

on_exit() {
    local rc=${1:-$?}
    trap - TERM INT HUP EXIT
    if [[ -n $BROWSER_PID ]]; then
        kill -TERM "$BROWSER_PID" 2>/dev/null
        wait "$BROWSER_PID" 2>/dev/null
    fi
    if [[ -n $UNCLUTTER_PID ]]; then
        kill "$UNCLUTTER_PID" 2>/dev/null
    fi
    if [[ -n $SLEEP_PID ]]; then
        kill "$SLEEP_PID" 2>/dev/null
    fi
    cleanup_profile
    log "stopped"
    exit "$rc"
}

main() {
    load_config

    [[ -n ${MES_KIOSK_URL:-} ]] || die "MES_KIOSK_URL is not set (environment or $CONFIG)"

    local terminal=${MES_TERMINAL_ID:-${HOSTNAME:-}}
    if [[ -z $terminal && -r /etc/hostname ]]; then
        terminal=$(</etc/hostname)
    fi
    terminal=${terminal%%.*}
    [[ $terminal =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "invalid terminal id '$terminal' (set MES_TERMINAL_ID)"

    KIOSK_URL=${MES_KIOSK_URL//\{terminal\}/$terminal}
    [[ $KIOSK_URL =~ ^https?:// ]] || die "MES_KIOSK_URL must be an http(s) URL: $KIOSK_URL"

    local browser
    browser=$(find_browser) || die "chromium not found (apt-get install chromium)"
    # Chinese-speaking operators read recipe text and screens in Simplified Chinese: without a
    # CJK font Chromium draws empty boxes, so the panel refuses to start instead
    if command -v fc-list >/dev/null 2>&1 && ! fc-list :lang=zh-cn family 2>/dev/null | grep -q .; then
        die "no Chinese (CJK) font installed (apt-get install fonts-noto-cjk)"
    fi

    local -a extra=()
    if [[ -n ${MES_KIOSK_EXTRA_FLAGS:-} ]]; then
        read -r -a extra <<<"$MES_KIOSK_EXTRA_FLAGS"
    fi

    trap 'on_exit 0' TERM INT HUP
    trap 'on_exit' EXIT

    hide_pointer
    wait_for_server

    # No translate bar, no swipe-to-go-back on touch screens and touchpads.
    local disabled_features=Translate,OverscrollHistoryNavigation,TouchpadOverscrollHistoryNavigation
    local delay=1 started status size
    local -a window=()
    while true; do
        # A fresh, throw-away profile per launch: no cookies, cache or crash
        # state survive a restart, so no "restore pages?" bubble either.
        PROFILE_DIR=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/mes-kiosk.XXXXXX") ||
            die "cannot create a profile directory"

        size=$(screen_size)
        window=()
        if [[ -n $size ]]; then
            window=("--window-position=0,0" "--window-size=${size/x/,}")
        fi

        local -a flags=(
            --kiosk
            "${window[@]}"
            --user-data-dir="$PROFILE_DIR"
            --no-first-run
            --no-default-browser-check
            --noerrdialogs
            --disable-session-crashed-bubble
            --disable-infobars
            --disable-pinch
            --overscroll-history-navigation=0
            # One --disable-features flag only: Chromium honours the last one.
            --disable-features="${disabled_features}"
            --touch-events=enabled
            # No keyring prompt on an auto-login session.
            --password-store=basic
            # Alarm/confirmation sounds without a prior tap.
            --autoplay-policy=no-user-gesture-required
            "${extra[@]}"
        )

        log "starting $browser for terminal $terminal: $KIOSK_URL"
        started=$SECONDS
        "$browser" "${flags[@]}" "$KIOSK_URL" &
        BROWSER_PID=$!
        # Give the browser time to connect to the X server, then switch
        # blanking off (see screen_always_on).
        sleep 5 &
        SLEEP_PID=$!
        wait "$SLEEP_PID"
        SLEEP_PID=
        screen_always_on
        wait "$BROWSER_PID"
        status=$?
        BROWSER_PID=
        cleanup_profile

        # Quick exits in a row (broken flag, no display) back off up to 60s;
        # after a run of 30s or more restart after 2s.
        if ((SECONDS - started < 30)); then
            delay=$((delay * 2 > 60 ? 60 : delay * 2))
        else
            delay=2
        fi
        log "browser exited with status $status; restarting in ${delay}s"
        # in the background so that a TERM is handled at once
        sleep "$delay" &
        SLEEP_PID=$!
        wait "$SLEEP_PID"
        SLEEP_PID=
    done
}

main "$@"
