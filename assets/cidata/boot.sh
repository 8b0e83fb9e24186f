#!/bin/sh
# llima-box guest boot driver, run as root on every boot by 00-lima.boot.sh
# with LIMA_CIDATA_MNT set to the mounted cidata volume. It applies the
# environment, provisions data files and scripts, and writes this boot's
# instance id into the markers the host waits for. A failing step is logged,
# makes the exit status 1, and does not stop the steps after it.
set -u
: "${LIMA_CIDATA_MNT:?must point at the mounted cidata volume}"
# Overridable only so tests can run this script without touching the system.
RUN=${LIMA_BOOT_RUN_DIR:-/run}
ETC=${LIMA_BOOT_ETC_DIR:-/etc}
rc=0

log() {
	echo "LIMA $(date -u +%Y-%m-%dT%H:%M:%SZ)| $*"
}

fail() {
	log "ERROR: $*" >&2
	rc=1
}

# Exports KEY=VALUE lines the way pam_env reads them: a leading "export ",
# comments, blank lines and quotes around the value are dropped.
load_env() {
	[ -f "$1" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line#export }
		case $line in
		'#'*) continue ;;
		*=*) ;;
		*) continue ;;
		esac
		key=${line%%=*}
		value=${line#*=}
		case $key in
		'' | [0-9]* | *[!A-Za-z0-9_]*) continue ;;
		esac
		case $value in
		\"*\")
			value=${value#\"}
			value=${value%\"}
			;;
		\'*\')
			value=${value#\'}
			value=${value%\'}
			;;
		esac
		export "$key=$value"
	done <"$1"
}

# Replaces the #LIMA-START..#LIMA-END block of /etc/environment.
update_etc_environment() {
	new=$(mktemp) || return 1
	if [ -f "$ETC/environment" ]; then
		sed '/^#LIMA-START$/,/^#LIMA-END$/d' "$ETC/environment" >"$new"
	fi
	cat "$LIMA_CIDATA_MNT/etc_environment" >>"$new"
	if cmp -s "$new" "$ETC/environment"; then
		rm -f "$new"
		return 0
	fi
	cat "$new" >"$ETC/environment"
	rm -f "$new"
	# Sessions opened before this point lack the new variables.
	if command -v loginctl >/dev/null 2>&1; then
		loginctl terminate-user "$LIMA_CIDATA_USER" >/dev/null 2>&1 || true
	fi
}

write_data_files() {
	# shellcheck disable=SC2154 # owner, perms and overwrite are set by eval
	for f in "$LIMA_CIDATA_MNT"/provision.data/*; do
		[ -f "$f" ] || continue
		i=${f##*/}
		case $i in *[!0-9]*) continue ;; esac
		eval "path=\${LIMA_CIDATA_DATAFILE_${i}_PATH:-}"
		eval "owner=\${LIMA_CIDATA_DATAFILE_${i}_OWNER:-root:root}"
		eval "perms=\${LIMA_CIDATA_DATAFILE_${i}_PERMISSIONS:-644}"
		eval "overwrite=\${LIMA_CIDATA_DATAFILE_${i}_OVERWRITE:-true}"
		if [ -z "$path" ]; then
			fail "data file $i has no path in lima.env"
			continue
		fi
		if [ -e "$path" ] && [ "$overwrite" = false ]; then
			log "keeping existing $path"
			continue
		fi
		dir=$(dirname "$path")
		user=${owner%%:*}
		if [ ! -d "$dir" ]; then
			# The owner creates missing directories, so they belong to them.
			if [ "$user" = "$(id -un)" ]; then
				mkdir -p "$dir"
			else
				sudo -iu "$user" mkdir -p "$dir"
			fi
		fi
		log "writing $path"
		{ cp "$f" "$path" && chown "$owner" "$path" && chmod "$perms" "$path"; } ||
			fail "cannot write data file $path"
	done
}

run_as_root() {
	for f in "$LIMA_CIDATA_MNT/$1"/*; do
		[ -f "$f" ] || continue
		log "running $1/${f##*/}"
		"$f" || fail "$1/${f##*/} exited with status $?"
	done
}

run_as_user() {
	params=$(env | sed -n 's/^\(PARAM_[A-Za-z0-9_]*\)=.*/\1/p' | paste -sd, -)
	copy="$LIMA_CIDATA_HOME/.lima-user-script"
	for f in "$LIMA_CIDATA_MNT"/provision.user/*; do
		[ -f "$f" ] || continue
		log "running provision.user/${f##*/} as $LIMA_CIDATA_USER"
		if ! { cp "$f" "$copy" && chown "$LIMA_CIDATA_USER" "$copy" && chmod 755 "$copy"; }; then
			fail "cannot copy provision.user/${f##*/} to $copy"
			continue
		fi
		set -- sudo -iu "$LIMA_CIDATA_USER"
		[ -n "$params" ] && set -- "$@" "--preserve-env=$params"
		[ -d "/run/user/$LIMA_CIDATA_UID" ] && set -- "$@" "XDG_RUNTIME_DIR=/run/user/$LIMA_CIDATA_UID"
		"$@" "$copy" || fail "provision.user/${f##*/} exited with status $?"
		rm -f "$copy"
	done
}

rm -f "$RUN/lima-ssh-ready" "$RUN/lima-boot-done"
load_env "$LIMA_CIDATA_MNT/lima.env"
load_env "$LIMA_CIDATA_MNT/param.env"
load_env "$LIMA_CIDATA_MNT/etc_environment"
log "boot $LIMA_CIDATA_IID of $LIMA_CIDATA_NAME"

update_etc_environment || fail "cannot update $ETC/environment"
if ! grep -qs '[[:space:]]host\.lima\.internal$' "$ETC/hosts"; then
	printf '%s\thost.lima.internal\n' "$LIMA_CIDATA_SLIRP_GATEWAY" >>"$ETC/hosts" ||
		fail "cannot add host.lima.internal to $ETC/hosts"
fi
# Users, host keys and sshd are set up by cloud-init before this per-boot
# stage, so SSH logins now see the final environment.
echo "$LIMA_CIDATA_IID" >"$RUN/lima-ssh-ready"

run_as_root provision.dependency
write_data_files
run_as_root provision.system
run_as_user

echo "$LIMA_CIDATA_IID" >"$RUN/lima-boot-done"
log "boot done (status $rc)"
exit "$rc"
