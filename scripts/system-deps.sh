#!/bin/sh
# Install the Debian/Ubuntu packages plugqdisc needs to build and to run its lab, if any
# is missing: with apt-get as root, otherwise say what to install and fail.
set -eu
PKGS="libnl-3-dev libnl-route-3-dev libnl-genl-3-dev libnl-cli-3-dev pkg-config gcc make
      user-mode-linux kmod iproute2 util-linux strace valgrind"
PYTHON=${PYTHON:-python3}

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
# The interpreter needs its headers (to build the extension) and venv/ensurepip.
if ! "$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing="$missing python3-dev"
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    missing="$missing python3-venv"
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "plugqdisc needs these packages:$missing" >&2
    echo "install them as root: apt-get install$missing" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "plugqdisc needs:$missing (Debian/Ubuntu names; on Fedora: libnl3-devel" \
         "pkgconf-pkg-config, and a User-Mode Linux kernel for the lab)" >&2
    exit 1
fi
echo "installing:$missing"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
