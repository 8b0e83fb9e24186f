//! Builds the guest agent (`crates/guest-agent`) as a static executable for
//! the target's architecture and puts it in OUT_DIR, where `src/env/agent`
//! embeds it: llima-box installs it into the guest itself, so `cargo
//! install --path .` is all a user builds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for dir in ["crates/guest-agent", "crates/proto", "crates/setid-filter"] {
        println!("cargo:rerun-if-changed={dir}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let dest = out.join("guest-agent");
    if !target.ends_with("-linux-gnu") {
        // No Linux agent can be built for this target here; the empty file
        // makes llima-box ask for one (LLIMA_BOX_GUEST_AGENT) when needed.
        std::fs::write(&dest, b"").expect("write OUT_DIR/guest-agent");
        return;
    }
    let manifest = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
        .join("crates/guest-agent/Cargo.toml");
    let target_dir = out.join("agent-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--profile", "guest-agent", "--target", &target])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's settings (clippy's wrapper, its flags, its
        // target directory) are not the agent's.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // With an explicit --target these reach only the agent, not build
        // scripts or proc macros: a static-pie that runs on any guest libc.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    let status = cmd
        .status()
        .expect("cannot run cargo to build the guest agent");
    assert!(status.success(), "building the guest agent failed");
    let built = target_dir
        .join(&target)
        .join("guest-agent/llima-box-guest-agent");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
}
