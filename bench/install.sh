#!/usr/bin/env bash
# Idempotently install the load generators and the reference server used by
# the corekv benchmarks: wrk, nginx (Debian packages) and oha (crates.io).
# Safe to run repeatedly: anything already present is skipped.
set -euo pipefail

log() { printf '[install] %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        log "not root and no sudo: cannot apt-get install; relying on what is installed"
    fi
fi

apt_updated=0
apt_install() {
    # apt_install PKG [ALTERNATIVE...]: install the first package that works.
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        timeout 300 $SUDO apt-get update -qq >/dev/null
        apt_updated=1
    fi
    local p
    for p in "$@"; do
        if DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq \
                --no-install-recommends "$p" >/dev/null; then
            log "installed $p"
            return 0
        fi
        log "apt-get install $p failed, trying the next alternative"
    done
    return 1
}

nginx_bin() {
    command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

# --- wrk -------------------------------------------------------------------
if command -v wrk >/dev/null 2>&1; then
    log "wrk already present: $(command -v wrk)"
else
    apt_install wrk
fi

# --- nginx -----------------------------------------------------------------
if [ -n "$(nginx_bin)" ]; then
    log "nginx already present: $(nginx_bin)"
else
    # Debian's postinst may try to start the system nginx on :80; in
    # containers policy-rc.d usually forbids that. The benchmark never uses
    # the system service, it runs its own instance (bench/nginx.sh).
    apt_install nginx-light nginx
fi

# --- oha -------------------------------------------------------------------
if command -v oha >/dev/null 2>&1; then
    log "oha already present: $(command -v oha)"
elif [ -x "$HOME/.cargo/bin/oha" ]; then
    log "oha already present: $HOME/.cargo/bin/oha"
else
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found: cannot install oha"; exit 1
    fi
    log "cargo install oha --locked (first time only, takes a few minutes)"
    timeout 1200 cargo install oha --locked --quiet
    log "installed oha: $("$HOME/.cargo/bin/oha" --version)"
fi

# Nothing above needs python3 except bench/keys.py (placement helper).
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3
fi

log "versions: $(wrk -v 2>&1 | head -1 | cut -c1-60 || true)"
log "          $("$(nginx_bin)" -v 2>&1 | head -1)"
log "          $(oha --version 2>/dev/null || "$HOME/.cargo/bin/oha" --version)"
