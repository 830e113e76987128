#!/usr/bin/env bash
# Runs examples/deploy/taskengine-node.service under a real systemd (PID 1 of a container booted
# with systemd-nspawn from this machine's own root, changes kept in memory): start the node, let it
# trigger, `systemctl stop` it, and report its exit status, its log and a replay check of its
# database. Needs root and systemd-nspawn (Debian: systemd-container). Not part of `make test`:
# booting a container is too heavy for CI.
#   usage: examples/deploy/check-systemd.sh [VENV]     (VENV: a virtualenv with taskengine installed)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$(cd "${1:-$repo/.venv}" && pwd)
root=/mnt/taskengine-check-root
out=$(mktemp -d)
mkdir -p "$root"
mountpoint -q "$root" || mount --bind / "$root"
trap 'umount "$root" 2>/dev/null || true' EXIT
cat > "$out/check.sh" <<SCRIPT
#!/bin/bash
exec > /out/report.txt 2>&1
set -x
chmod o+rx /root   # the venv's interpreter lives under /root here; the unit runs as a dynamic user
mkdir -p /opt/taskengine && ln -sfn "$venv" /opt/taskengine/venv && cp "$repo/examples/node.py" /opt/taskengine/
cp "$repo/examples/deploy/taskengine-node.service" /etc/systemd/system/ && systemctl daemon-reload
systemd-analyze verify /etc/systemd/system/taskengine-node.service
systemctl start taskengine-node
for i in \$(seq 100); do journalctl -u taskengine-node | grep -q "triggered index 1" && break; sleep 0.2; done
systemctl stop taskengine-node
systemctl show taskengine-node -p Result -p ExecMainCode -p ExecMainStatus -p ActiveState
journalctl -u taskengine-node --no-pager -o cat
"$venv/bin/taskengine" replay /var/lib/private/taskengine-node/db
systemctl start taskengine-node   # a restart finds its task and goes on
for i in \$(seq 100); do journalctl -u taskengine-node | grep -q "triggered index 2" && break; sleep 0.2; done
systemctl stop taskengine-node
journalctl -u taskengine-node --no-pager -o cat | tail -4
systemctl show taskengine-node -p Result -p ExecMainStatus
# the exit status itself: without SuccessExitStatus=143 systemd calls the same stop a failure
mkdir -p /etc/systemd/system/taskengine-node.service.d
printf '[Service]\nSuccessExitStatus=\nRestart=no\n' > /etc/systemd/system/taskengine-node.service.d/status.conf
systemctl daemon-reload && systemctl start taskengine-node
for i in \$(seq 100); do journalctl -u taskengine-node | grep -q "triggered index 3" && break; sleep 0.2; done
systemctl stop taskengine-node
journalctl -u taskengine-node --no-pager -o cat | grep -i "exited\|failed" || true
systemctl show taskengine-node -p Result -p ExecMainStatus
SCRIPT
chmod +x "$out/check.sh"
cat > "$out/check.service" <<UNIT
[Unit]
Description=check taskengine-node
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/out/check.sh
ExecStopPost=/usr/bin/systemctl poweroff --no-block
[Install]
WantedBy=multi-user.target
UNIT
timeout 240 systemd-nspawn -q -D "$root" --volatile=overlay --register=no --keep-unit --link-journal=no \
    --private-network --machine=taskengine-check --bind="$out:/out" \
    --bind-ro="$out/check.service:/etc/systemd/system/check.service" -b systemd.wants=check.service \
    > "$out/boot.log" 2>&1 || true
cat "$out/report.txt"
