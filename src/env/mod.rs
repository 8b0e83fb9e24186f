//! Environments: which one a project directory gets ([`naming`]), the
//! guest agent that builds and runs them ([`guest_agent`]), how a command
//! reaches one ([`exec`]), and the workflow the commands share
//! ([`service`]).

pub(crate) mod exec;
mod git_watch;
pub(crate) mod guest_agent;
mod host_file;
pub(crate) mod naming;
pub(crate) mod ports;
pub(crate) mod selection;
mod service;
pub(crate) mod settings;

use exec::ExecRequest;
pub(crate) use git_watch::{Change as GitChange, Snapshot as GitSnapshot};
pub(crate) use llima_box_proto::message::EnvInfo;
pub(crate) use naming::{canonical_project, env_name_of, validate_name};
pub(crate) use service::{Guest, Prepared, guest_path};

/// Everything that can go wrong deciding on or talking about an environment.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot resolve project path {path}: {source}; check that it exists and is readable")]
    Resolve {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("project path {0} is not a directory; give the project's directory")]
    NotADirectory(std::path::PathBuf),
    #[error("project path {0:?} is not valid UTF-8; rename it, environments need a UTF-8 path")]
    NotUtf8(std::path::PathBuf),
    #[error(
        "refusing {path} as a project: {reason}; pick a directory that holds only the project, or pass --force if you mean it"
    )]
    SensitiveProject {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("project path {path:?} is not supported: {reason}")]
    Unsupported { path: String, reason: &'static str },
    #[error(
        "invalid environment name {0:?}: names are [a-z_][a-z0-9_-]*, at most 32 characters (see `llima-box list`)"
    )]
    InvalidName(String),
    #[error(
        "{project} is shared with the VM read-only (mount {point}); environments need a writable mount: set `writable: true` on it in {lima_yaml}, then restart the VM",
        project = project.display(),
        lima_yaml = lima_yaml.display()
    )]
    ReadOnlyShare {
        project: std::path::PathBuf,
        point: String,
        lima_yaml: std::path::PathBuf,
    },
    #[error(
        "{project} is not shared with the VM; add a writable mount for it to {lima_yaml} (mounts: - location: \"{project}\" with writable: true), then restart the VM",
        project = project.display(),
        lima_yaml = lima_yaml.display()
    )]
    NotShared {
        project: std::path::PathBuf,
        lima_yaml: std::path::PathBuf,
    },
    #[error("cannot read the configuration of {}: {source}", dir.display())]
    Config {
        dir: std::path::PathBuf,
        source: Box<crate::vm::config::ConfigError>,
    },
    #[error("cannot read or write the project's settings in {}: {source}", path.display())]
    Settings {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pass the command on: {0}")]
    Command(String),
    #[error("cannot read or write the published ports in {}: {source}", path.display())]
    Ports {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid port {0}")]
    PortSpec(String),
    #[error(
        "host port {host_port} is already published for port {env_port} of {project}; pick another host port or leave it out to get a free one"
    )]
    PortTaken {
        host_port: u16,
        project: String,
        env_port: u16,
    },
    #[error(
        "cannot listen on 127.0.0.1:{port}: {source}; another program has it (see `ss -ltnp`), pick another host port or leave it out to get a free one"
    )]
    PortBusy { port: u16, source: std::io::Error },
    #[error(transparent)]
    Access(Box<crate::vm::access::AccessError>),
    #[error("cannot connect to the VM: {0}")]
    Connect(Box<crate::ssh::Error>),
    #[error("cannot record the guest agent's version in {}: {source}", path.display())]
    Stamp {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "this llima-box was built where no Linux guest agent can be built; set {} to a static build of crates/guest-agent for the VM's architecture",
        guest_agent::OVERRIDE_VAR
    )]
    GuestAgentNotBuilt,
    #[error(
        "cannot read the guest agent named by {}={path:?}: {source}",
        guest_agent::OVERRIDE_VAR
    )]
    GuestAgentOverride {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the guest agent is not a 64-bit Linux executable of a known architecture; check {}",
        guest_agent::OVERRIDE_VAR
    )]
    GuestAgentNotElf,
    #[error(
        "the guest agent is dynamically linked, so it would depend on the VM's C library; build it with RUSTFLAGS=\"-C target-feature=+crt-static\""
    )]
    GuestAgentNotStatic,
    #[error(
        "the VM is {guest} but this llima-box carries a guest agent for {agent}; build llima-box on a {guest} machine, or set {} to a static {guest} build of crates/guest-agent (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p llima-box-guest-agent --target {guest}-unknown-linux-gnu)",
        guest_agent::OVERRIDE_VAR
    )]
    GuestAgentArch { guest: String, agent: &'static str },
    #[error("cannot install the guest agent in the VM: {0}")]
    GuestAgentInstall(String),
    #[error(
        "the guest agent does not answer: {0}; see `llima-box vm shell -- sudo journalctl -u llima-box-agent`"
    )]
    GuestAgentUnreachable(String),
    #[error("the guest agent answered something unexpected ({0}); upgrade llima-box")]
    GuestAgentProtocol(String),
    #[error("the guest agent failed: {0}")]
    GuestAgentFailed(String),
}
