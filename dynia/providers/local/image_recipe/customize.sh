#!/bin/sh
# Turn a freshly installed Debian tree into a Dynia node: a container that boots and behaves like a
# fresh VM. Runs inside the image (Dockerfile path, ROOT empty) or against an unpacked root
# filesystem from the host (debootstrap path, ROOT=/path/to/rootfs). Uses only plain file
# operations so both paths give the same result.
# Usage: customize.sh ROOT RECIPE_DIR MIRROR SUITE
set -eu
ROOT="$1"
RECIPE="$2"
MIRROR="$3"
SUITE="$4"

install -m 0755 "$RECIPE/dynia-node-init" "$ROOT/usr/local/sbin/dynia-node-init"

# Every node gets its own SSH host keys at first boot, never the ones baked into the image.
rm -f "$ROOT"/etc/ssh/ssh_host_*
install -m 0644 "$RECIPE/dynia-ssh-hostkeys.service" \
    "$ROOT/etc/systemd/system/dynia-ssh-hostkeys.service"
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants" "$ROOT/etc/systemd/system/ssh.service.requires"
ln -sf /etc/systemd/system/dynia-ssh-hostkeys.service \
    "$ROOT/etc/systemd/system/multi-user.target.wants/dynia-ssh-hostkeys.service"
ln -sf /etc/systemd/system/dynia-ssh-hostkeys.service \
    "$ROOT/etc/systemd/system/ssh.service.requires/dynia-ssh-hostkeys.service"

mkdir -p "$ROOT/etc/ssh/sshd_config.d"
cat > "$ROOT/etc/ssh/sshd_config.d/dynia.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
CONF
install -d -m 0700 "$ROOT/root/.ssh"

# A fresh identity per node: systemd writes a new machine-id at first boot.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -sf /etc/machine-id "$ROOT/var/lib/dbus/machine-id"
# Docker gives each container its own /etc/hostname (bind-mounted during a Dockerfile build too).
if [ -n "$ROOT" ]; then
    rm -f "$ROOT/etc/hostname"
fi

# Units that make no sense in a container, or that would change the kernel shared with the host.
for unit in getty.target console-getty.service getty@tty1.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
    systemd-remount-fs.service systemd-sysctl.service systemd-modules-load.service \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount dev-hugepages.mount \
    systemd-firstboot.service systemd-journald-audit.socket e2scrub_reap.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done

# Caddy's packaged default site listens on :80, which belongs to HAProxy.
install -m 0644 "$RECIPE/Caddyfile" "$ROOT/etc/caddy/Caddyfile"

# Package sources as on a fresh VM, with empty and backdated lists so the first install refreshes.
cat > "$ROOT/etc/apt/sources.list" <<LIST
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
LIST
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb
mkdir -p "$ROOT/var/lib/apt/lists/partial"
touch -d @0 "$ROOT/var/lib/apt/lists"
