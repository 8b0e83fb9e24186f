# shellcheck shell=sh disable=SC2154
# $mac is set by the line above. If the NIC with that MAC did not come up as
# eth0, rename it, then give eth0 up to 30 s to get an IPv4 address.
if [ ! -e /sys/class/net/eth0 ]; then
	for dev in /sys/class/net/*; do
		if [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ]; then
			ip link set dev "${dev##*/}" down
			ip link set dev "${dev##*/}" name eth0
			ip link set dev eth0 up
		fi
	done
fi
if [ -e /sys/class/net/eth0 ]; then
	i=0
	while [ "$i" -lt 30 ] && ! ip -4 addr show dev eth0 2>/dev/null | grep -q 'inet '; do
		sleep 1
		i=$((i + 1))
	done
fi
