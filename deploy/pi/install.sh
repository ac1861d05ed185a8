#!/bin/sh
# Install the climastream gateway agent on Raspberry Pi OS (Debian bookworm), edge part only.
#
#   sudo sh deploy/pi/install.sh [path/to/climastream-source-or-wheel]
#
# Installs into /opt/climastream/venv with `pip install '<src>[edge]'` (no faust, no
# influxdb-client), creates the `climastream` user (in `dialout` for serial sensors), puts an
# example config at /etc/climastream/gateway.yaml unless one exists, and enables the systemd
# unit. Re-running it upgrades the agent (and restarts it if it runs) and keeps the config,
# the secrets and the buffer. The config example and the unit come from this script's own
# folder, so a wheel or sdist path works too.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="${1:-$(cd "$HERE/../.." && pwd)}"
# where it installs (overridable only so that tests can run it in a scratch directory)
PREFIX="${CLIMASTREAM_PREFIX:-/opt/climastream}"
CONF="${CLIMASTREAM_CONF:-/etc/climastream}"
STATE="${CLIMASTREAM_STATE:-/var/lib/climastream}"
UNITS="${CLIMASTREAM_UNITS:-/etc/systemd/system}"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo)" >&2
    exit 1
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip ca-certificates

id climastream >/dev/null 2>&1 || useradd --system --home-dir /var/lib/climastream \
    --shell /usr/sbin/nologin --groups dialout climastream

python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip
"$PREFIX/venv/bin/pip" install -q "$SRC[edge]"

install -d -m 0750 -o root -g climastream "$CONF"
# the unit reads it (as root) for ${VAR} secrets such as KAFKA_PASSWORD; never overwritten
[ -e "$CONF/secrets.env" ] || install -m 0600 -o root -g root /dev/null "$CONF/secrets.env"
if [ ! -e "$CONF/gateway.yaml" ]; then
    install -m 0640 -o root -g climastream "$HERE/gateway.example.yaml" "$CONF/gateway.yaml"
    printf '%s\n' \
        "install.sh: edit $CONF/gateway.yaml (gateway_id, kafka, sources) and" \
        "  $CONF/secrets.env (KAFKA_PASSWORD=...), then check it as the service would run it:" \
        "  sudo systemd-run --quiet --pipe --wait --property=User=climastream \\" \
        "      --property=EnvironmentFile=$CONF/secrets.env \\" \
        "      $PREFIX/venv/bin/climastream edge check --config $CONF/gateway.yaml"
fi
install -d -m 0750 -o climastream -g climastream "$STATE"
install -m 0644 "$HERE/climastream-edge.service" "$UNITS/climastream-edge.service"
systemctl daemon-reload
systemctl enable climastream-edge.service
# an upgrade: a running agent is restarted on the new code (a stopped one stays stopped)
systemctl try-restart climastream-edge.service
echo "install.sh: enabled; start with: sudo systemctl start climastream-edge"
