//! The shell function with which both installers (the runtime's and the
//! guest agent's) take an executable from stdin: checked against its
//! sha256, written beside its destination and renamed over it, so that a
//! reader or a running program never sees half a file. A macro, so that it
//! can be `concat!`ed into each installer's script.

/// `receive DEST SHA256 WHAT`
macro_rules! receive_fn {
    () => {
        r#"receive() {
    r_dir=$(dirname "$1")
    mkdir -p -m 0755 "$r_dir"
    r_tmp=$(mktemp "$r_dir/.receive.XXXXXX")
    trap 'rm -f "$r_tmp"' EXIT
    cat >"$r_tmp"
    r_got=$(sha256sum "$r_tmp" | cut -d' ' -f1)
    if [ "$r_got" != "$2" ]; then
        echo "$3 arrived damaged (sha256 $r_got, expected $2); try again" >&2
        exit 1
    fi
    [ "$(id -u)" -ne 0 ] || chown root:root "$r_tmp"
    chmod 0755 "$r_tmp"
    mv -f "$r_tmp" "$1"
    trap - EXIT
}
"#
    };
}

pub(super) use receive_fn;
