#!/bin/sh
# Run by cloud-init as root on every boot: mount the cidata volume and hand
# over to its boot.sh. The mount options override the ISO's modes so the
# scripts on it are executable by root only.
set -eu
LIMA_CIDATA_MNT=/mnt/lima-cidata
# shellcheck disable=SC2174 # /mnt exists: only the last directory is new
mkdir -p -m 700 "$LIMA_CIDATA_MNT"
if ! grep -qs " $LIMA_CIDATA_MNT " /proc/mounts; then
	mount -t iso9660 -o ro,mode=0700,dmode=0700,overriderockperm,exec,uid=0 \
		/dev/disk/by-label/cidata "$LIMA_CIDATA_MNT"
fi
export LIMA_CIDATA_MNT
exec "$LIMA_CIDATA_MNT/boot.sh"
