#!/bin/sh
# Install the climastream gateway agent on Raspberry Pi OS (Debian bookworm), edge part only.
#
#   sudo sh deploy/pi/install.sh [path/to/climastream-source-or-wheel]
#
# Installs into /opt/climastream/venv with `pip install '<src>[edge]'` (no faust, no
# influxdb-client), creates the `climastream` user (in `dialout` for serial sensors), puts an
# example config at /etc/climastream/gateway.yaml unless one exists, and enables the systemd
# unit. Re-running it upgrades the agent and keeps the config and the buffer.
set -eu

SRC="${1:-$(cd "$(dirname "$0")/../.." && pwd)}"
PREFIX=/opt/climastream
CONF=/etc/climastream

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
if [ ! -e "$CONF/gateway.yaml" ]; then
    install -m 0640 -o root -g climastream "$SRC/deploy/pi/gateway.example.yaml" "$CONF/gateway.yaml"
    echo "install.sh: edit $CONF/gateway.yaml (gateway_id, kafka, sources), then:"
    echo "  sudo -u climastream $PREFIX/venv/bin/climastream edge check --config $CONF/gateway.yaml"
fi
install -d -m 0750 -o climastream -g climastream /var/lib/climastream
install -m 0644 "$SRC/deploy/pi/climastream-edge.service" /etc/systemd/system/climastream-edge.service
systemctl daemon-reload
systemctl enable climastream-edge.service
echo "install.sh: enabled; start with: sudo systemctl start climastream-edge"
