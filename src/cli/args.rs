//! Command-line surface. Only parsing lives here; `cli::run` dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default instance name, shared with `LLIMA_BOX_INSTANCE`.
pub(crate) const DEFAULT_INSTANCE: &str = "llima-box";

#[derive(Debug, Parser)]
#[command(
    name = "llima-box",
    version,
    about = "Per-project sandboxed Linux environments for coding agents, in one shared Lima-compatible VM",
    long_about = "llima-box gives every project directory its own isolated Linux environment \
                  inside one shared VM that it boots and manages itself with QEMU. \
                  The VM lives in $LIMA_HOME (default ~/.lima) in Lima's own format.",
    after_help = "Examples:\n  llima-box shell                 # a shell in the current project's environment\n  llima-box shell ~/src/app -- make test\n  llima-box vm status"
)]
pub(crate) struct Cli {
    /// Name of the VM instance under $LIMA_HOME.
    #[arg(
        long,
        global = true,
        env = "LLIMA_BOX_INSTANCE",
        default_value = DEFAULT_INSTANCE,
        value_name = "NAME"
    )]
    pub instance: String,

    /// Print more detail (repeat for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Open a shell (or run one command) in a project's environment.
    #[command(
        after_help = "Examples:\n  llima-box shell\n  llima-box shell ~/src/app -- cargo test\n  llima-box shell --publish 3000:8080 -- npm run dev\n  echo hi | llima-box shell . -- cat"
    )]
    Shell(ShellArgs),

    /// List environments.
    #[command(after_help = "Examples:\n  llima-box list\n  llima-box list --json")]
    List(JsonArg),

    /// Delete one environment (never the project files on the host).
    #[command(
        after_help = "Examples:\n  llima-box delete            # the current directory's environment\n  llima-box delete ~/src/app -y"
    )]
    Delete(DeleteArgs),

    /// Delete every environment (never the project files on the host).
    #[command(
        name = "delete-all",
        after_help = "Example:\n  llima-box delete-all -y"
    )]
    DeleteAll(YesArg),

    /// A project's own settings: its environment's limits and git writes.
    #[command(subcommand)]
    Project(ProjectCommand),

    /// What a project's environment may reach on the network.
    #[command(subcommand)]
    Net(NetCommand),

    /// Ports of a project's environment on the host's 127.0.0.1.
    #[command(subcommand)]
    Port(PortCommand),

    /// Self-test of the VM lifecycle: create, start, SSH exec, stop.
    #[command(name = "test-vm", after_help = "Example:\n  llima-box test-vm")]
    TestVm(TestVmArgs),

    /// Manage the VM itself.
    #[command(subcommand)]
    Vm(VmCommand),

    /// Print a completion script for a shell.
    #[command(
        after_help = "Examples:\n  llima-box completions bash > ~/.local/share/bash-completion/completions/llima-box\n  llima-box completions zsh > ~/.zfunc/_llima-box    # a directory in $fpath\n  llima-box completions fish > ~/.config/fish/completions/llima-box.fish"
    )]
    Completions(CompletionsArgs),

    /// Print the manual page, or write one page per command into a directory.
    #[command(
        after_help = "Examples:\n  llima-box man | man -l -\n  llima-box man --dir ~/.local/share/man/man1 && man llima-box-vm-start"
    )]
    Man(ManArgs),

    /// Internal: the detached host agent that owns QEMU.
    #[command(hide = true)]
    Hostagent(HostagentArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    /// Project directory (default: the current directory).
    pub path: Option<PathBuf>,
    /// Do not forward the host's SSH agent.
    #[arg(long)]
    pub no_agent: bool,
    /// Use the directory even if it is the home directory, holds keys or
    /// the VM's files, or is reached through a symlink.
    #[arg(long)]
    pub force: bool,
    /// Make ENV_PORT of the environment reachable on the host's 127.0.0.1
    /// (on HOST_PORT, else a free port) while this shell runs.
    #[arg(long, value_name = "ENV_PORT[:HOST_PORT]")]
    pub publish: Vec<String>,
    /// Command and arguments to run instead of a login shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct YesArg {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Project path or environment name (default: the current directory).
    pub target: Option<String>,
    #[command(flatten)]
    pub yes: YesArg,
}

#[derive(Debug, Args)]
pub(crate) struct TestVmArgs {
    /// Keep the throwaway instance afterwards (for debugging).
    #[arg(long)]
    pub keep: bool,
    /// Test this existing instance instead of a throwaway one.
    #[arg(long, value_name = "NAME")]
    pub existing: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Show a project's settings (the defaults where it has none).
    #[command(
        after_help = "Examples:\n  llima-box project show\n  llima-box project show ~/src/app --json"
    )]
    Show(ProjectShowArgs),
    /// Change a project's settings. They are kept on the host, outside the
    /// project, and apply to its environment at once when it runs.
    #[command(
        after_help = "Examples:\n  llima-box project set --memory 4G --tasks 2000 --disk 20G\n  llima-box project set ~/src/app --git-writes allow\n  llima-box project set --default --memory 2G   # for every project without its own\n  llima-box project set --reset"
    )]
    Set(ProjectSetArgs),
}

/// A project, or with `--default` the defaults of those without settings
/// of their own.
#[derive(Debug, Args)]
pub(crate) struct TargetArg {
    /// Project directory (default: the current directory).
    pub path: Option<PathBuf>,
    /// The defaults of projects without settings of their own instead.
    #[arg(long, conflicts_with = "path")]
    pub default: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectShowArgs {
    #[command(flatten)]
    pub target: TargetArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectSetArgs {
    #[command(flatten)]
    pub target: TargetArg,
    /// Memory limit, its tmpfs included (e.g. 2G; default: half the VM's).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Limit on processes and threads (default: 4096).
    #[arg(long, value_name = "N")]
    pub tasks: Option<u32>,
    /// Share of CPU time against other environments, 1-10000 (default: 100).
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<u32>,
    /// Share of disk IO against other environments, 1-10000 (default: 100).
    #[arg(long, value_name = "N")]
    pub io_weight: Option<u32>,
    /// Limit on the home's disk use (e.g. 10G; default: a quarter of the
    /// VM's disk). The project's own files are the host's, not counted.
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Whether the project's git config and hooks, which git on the host
    /// runs, are writable inside (default: deny).
    #[arg(long, value_name = "allow|deny", value_parser = ["allow", "deny"])]
    pub git_writes: Option<String>,
    /// Back to the defaults (before the other options); the network
    /// policy stays (see `net set`).
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NetCommand {
    /// Show a project's network policy.
    #[command(
        after_help = "Examples:\n  llima-box net show\n  llima-box net show ~/src/app --json"
    )]
    Show(ProjectShowArgs),
    /// Change a project's network policy. It is kept on the host, outside
    /// the project, and applies at once, also to a running environment.
    #[command(
        after_help = "Examples:\n  llima-box net set --allow-host-port 5432   # a database on the host\n  llima-box net set ~/src/app --mode none\n  llima-box net set --default --mode none    # for every project without its own\n  llima-box net set --reset"
    )]
    Set(NetSetArgs),
    /// The connection attempts the guest's firewall refused to a project's
    /// environment since the VM started (the guest's kernel log keeps them).
    #[command(
        after_help = "Examples:\n  llima-box net log\n  llima-box net log ~/src/app --follow\n  llima-box net log --json"
    )]
    Log(NetLogArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NetLogArgs {
    /// Project directory (default: the current directory).
    pub path: Option<PathBuf>,
    /// Keep printing refusals as they happen (until Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct NetSetArgs {
    #[command(flatten)]
    pub target: TargetArg,
    /// open: public addresses (the host, link-local, LAN ranges and other
    /// environments stay closed); restricted: only the names --allow lets
    /// through, by name (DNS, and TCP through a proxy that checks the TLS
    /// server name or HTTP Host); none: loopback only. Default: open.
    #[arg(long, value_parser = ["open", "restricted", "none"])]
    pub mode: Option<String>,
    /// In restricted mode, let the environment reach DOMAIN (`*.DOMAIN`:
    /// any name under it). Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    pub allow: Vec<String>,
    /// Never let the environment reach DOMAIN, whatever --allow says.
    /// Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    pub deny: Vec<String>,
    /// Take DOMAIN off the allow or deny list. Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    pub remove_name: Vec<String>,
    /// Let this environment alone reach PORT of the host's 127.0.0.1, at
    /// host.lima.internal (192.168.5.2) (not in `none` mode). Repeatable.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub allow_host_port: Vec<u16>,
    /// Close an allowed host port again. Repeatable.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub remove_host_port: Vec<u16>,
    /// Back to the default policy (before the other options).
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PortCommand {
    /// Make a port of the environment (on its own loopback) reachable on
    /// the host's 127.0.0.1, until `unpublish` or `delete`; kept across VM
    /// restarts. Prints 127.0.0.1:HOST_PORT -> ENV_PORT.
    #[command(
        after_help = "Examples:\n  llima-box port publish 3000          # a free host port\n  llima-box port publish ~/src/app 3000:8080"
    )]
    Publish(PortPublishArgs),
    /// The project's published ports (every project's with --all).
    #[command(after_help = "Examples:\n  llima-box port list\n  llima-box port list --all --json")]
    List(PortListArgs),
    /// Stop publishing a port of the environment.
    #[command(after_help = "Example:\n  llima-box port unpublish 3000")]
    Unpublish(PortUnpublishArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PortPublishArgs {
    /// Project directory (default: the current directory) and
    /// ENV_PORT[:HOST_PORT].
    #[arg(num_args = 1..=2, value_names = ["PATH", "ENV_PORT[:HOST_PORT]"], required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PortListArgs {
    /// Project directory (default: the current directory).
    pub path: Option<PathBuf>,
    /// Every project's ports.
    #[arg(long, conflicts_with = "path")]
    pub all: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct PortUnpublishArgs {
    /// Project directory (default: the current directory) and ENV_PORT.
    #[arg(num_args = 1..=2, value_names = ["PATH", "ENV_PORT"], required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum VmCommand {
    /// Create (if needed) and boot the VM.
    #[command(
        after_help = "Examples:\n  llima-box vm start\n  llima-box vm start --template ./my-lima.yaml   # first start only"
    )]
    Start(StartArgs),
    /// Shut the VM down.
    #[command(after_help = "Examples:\n  llima-box vm stop\n  llima-box vm stop --force")]
    Stop(ForceArg),
    /// Show the VM's status.
    #[command(after_help = "Examples:\n  llima-box vm status\n  llima-box vm status --json")]
    Status(JsonArg),
    /// Delete the VM and its disk.
    #[command(after_help = "Example:\n  llima-box vm delete --force")]
    Delete(ForceArg),
    /// Show the host agent's or the serial console's log.
    #[command(after_help = "Examples:\n  llima-box vm logs\n  llima-box vm logs --serial --follow")]
    Logs(LogsArgs),
    /// List every instance under $LIMA_HOME, like `limactl list`.
    #[command(after_help = "Examples:\n  llima-box vm list\n  llima-box vm list --json")]
    List(VmListArgs),
    /// Validate lima.yaml files, like `limactl validate`.
    #[command(
        after_help = "Examples:\n  llima-box vm validate ~/.lima/llima-box/lima.yaml\n  llima-box vm validate --fill template.yaml"
    )]
    Validate(ValidateArgs),
    /// A shell or command in the VM as the admin user, like `limactl shell`.
    #[command(after_help = "Examples:\n  llima-box vm shell\n  llima-box vm shell -- uname -a")]
    Shell(VmShellArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Create the instance from this lima.yaml (its `base:` templates are
    /// embedded) instead of the built-in config. Only used when the instance
    /// does not exist yet.
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ForceArg {
    /// Do it without a graceful shutdown.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The guest's serial console instead of the host agent.
    #[arg(long)]
    pub serial: bool,
    /// Keep printing as the log grows.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VmListArgs {
    /// One JSON object per line, with limactl's keys.
    #[arg(long)]
    pub json: bool,
    /// Print instance names only.
    #[arg(long = "names-only")]
    pub names_only: bool,
    /// Instances to show (default: all).
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Print the filled configuration as YAML.
    #[arg(long)]
    pub fill: bool,
    /// lima.yaml files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct VmShellArgs {
    /// Do not forward the host's SSH agent.
    #[arg(long)]
    pub no_agent: bool,
    /// Working directory in the guest.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Command and arguments (default: a login shell).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write llima-box.1 and a page for every command (llima-box-vm-start.1,
    /// ...) into this directory instead of printing llima-box.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct HostagentArgs {
    /// Instance directory to serve.
    pub dir: PathBuf,
}
