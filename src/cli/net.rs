//! `llima-box net show|set|log`: a project's network policy, kept on the
//! host with its other settings and enforced by the guest's firewall, and
//! what that firewall refused.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use llima_box_proto::net::{Denial, Mode, NetPolicy};

use super::Output;
use super::args::{NetLogArgs, NetSetArgs, ProjectShowArgs};
use super::project::{Target, print_table, project};
use super::vm_shell::block_on;
use crate::env::Guest;
use crate::timeouts;

/// The policy as `net show` prints it: one `key value` per line.
fn describe(p: &NetPolicy) -> Vec<(&'static str, String)> {
    let mode = match p.mode {
        Mode::Open => {
            "open: public addresses; the host, LAN, link-local and other environments closed"
        }
        Mode::Restricted => "restricted: the allowed names only, by DNS and through the proxy",
        Mode::None => "none: loopback only",
    };
    let ports = match (p.host_ports.is_empty(), p.mode) {
        (true, _) => "none".to_string(),
        (false, m) => {
            let list: Vec<String> = p.host_ports.iter().map(u16::to_string).collect();
            match m {
                Mode::Open | Mode::Restricted => list.join(" "),
                Mode::None => format!("{} (closed in none mode)", list.join(" ")),
            }
        }
    };
    let names = |list: &[String]| match (list.is_empty(), p.mode) {
        (true, _) => "none".to_string(),
        (false, Mode::Restricted) => list.join(" "),
        (false, _) => format!("{} (used in restricted mode)", list.join(" ")),
    };
    vec![
        ("mode", mode.to_string()),
        ("host ports", ports),
        ("allowed names", names(&p.names.allow)),
        ("denied names", names(&p.names.deny)),
    ]
}

pub(super) fn show(lima_home: &Path, instance: &str, args: &ProjectShowArgs) -> Result<ExitCode> {
    let target = Target::of(&args.target)?;
    let (s, own, _) = target.load(lima_home, instance)?;
    let p = s.net;
    if args.json.json {
        let v = serde_json::json!({
            "mode": p.mode,
            "hostPorts": p.host_ports,
            "allow": p.names.allow,
            "deny": p.names.deny,
        });
        writeln!(std::io::stdout().lock(), "{}", target.json(v, own))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut lines = target.header(own);
    lines.extend(describe(&p));
    print_table(&lines)?;
    Ok(ExitCode::SUCCESS)
}

/// `p` changed as `args` say (`--reset` goes back to `base`); an error for
/// what cannot be done.
fn changed(mut p: NetPolicy, base: NetPolicy, args: &NetSetArgs) -> Result<NetPolicy> {
    if args.reset {
        p = base;
    }
    match args.mode.as_deref() {
        Some("open") => p.mode = Mode::Open,
        Some("restricted") => p.mode = Mode::Restricted,
        Some("none") => p.mode = Mode::None,
        Some(other) => bail!("unknown mode {other}: use open, restricted or none"),
        None => {}
    }
    for name in &args.remove_name {
        if !p.names.remove(name) {
            bail!("{name} is on neither the allow nor the deny list (see llima-box net show)");
        }
    }
    for name in &args.allow {
        p.names.allow(name).map_err(anyhow::Error::msg)?;
    }
    for name in &args.deny {
        p.names.deny(name).map_err(anyhow::Error::msg)?;
    }
    for port in &args.remove_host_port {
        if !p.remove_host_port(*port) {
            bail!("host port {port} is not allowed for this project (see llima-box net show)");
        }
    }
    for port in &args.allow_host_port {
        p.allow_host_port(*port);
    }
    p.check().map_err(anyhow::Error::msg)?;
    Ok(p)
}

pub(super) fn set(
    lima_home: &Path,
    instance: &str,
    args: &NetSetArgs,
    out: &Output,
) -> Result<ExitCode> {
    if !args.reset
        && args.mode.is_none()
        && args.allow_host_port.is_empty()
        && args.remove_host_port.is_empty()
        && args.allow.is_empty()
        && args.deny.is_empty()
        && args.remove_name.is_empty()
    {
        bail!(
            "nothing to change: give --mode, --allow, --deny, --remove-name, --allow-host-port, \
             --remove-host-port or --reset"
        );
    }
    let target = Target::of(&args.target)?;
    let (mut s, _, base) = target.load(lima_home, instance)?;
    s.net = changed(s.net, base.net, args)?;
    target.save_and_apply(lima_home, instance, &s, out)
}

/// How often `net log --follow` asks the guest.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A refusal as `net log` prints it.
fn line(d: &Denial) -> String {
    // A refused name: the name, then the address the proxy was asked for;
    // a refused query's destination is the name itself.
    let (dest, dns) = match &d.name {
        Some(name) if *name == d.dest => (name.clone(), true),
        Some(name) => (format!("{name} ({})", d.dest), false),
        None => (d.dest.clone(), false),
    };
    let dest = match d.port {
        Some(p) => format!("{dest}:{p}"),
        None => dest,
    };
    let dns = if dns { " (DNS)" } else { "" };
    let program = d
        .program
        .as_ref()
        .map_or(String::new(), |p| format!("  by {p}"));
    format!("{}  {:<4}  {dest}{dns}{program}", d.time, d.proto)
}

pub(super) fn log(
    lima_home: &Path,
    instance: &str,
    args: &NetLogArgs,
    out: &Output,
) -> Result<ExitCode> {
    let (project, name) = project(args.path.as_deref())?;
    block_on(async {
        let Some(guest) =
            Guest::connect(lima_home, instance, timeouts::SSH_DEADLINE.get()?).await?
        else {
            bail!(
                "the VM is not running, so nothing is logged (the log starts with each boot); \
                 start it with `llima-box vm start`"
            );
        };
        let mut after = 0;
        let mut shown = 0usize;
        loop {
            let (denials, next) = guest
                .net_log(&name, after)
                .await
                .with_context(|| format!("cannot read the refusals of environment {name}"))?;
            let mut stdout = std::io::stdout().lock();
            for d in &denials {
                match args.json.json {
                    true => writeln!(stdout, "{}", serde_json::to_string(d)?)?,
                    false => writeln!(stdout, "{}", line(d))?,
                }
            }
            stdout.flush()?;
            shown += denials.len();
            after = next;
            if !args.follow {
                break;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        if shown == 0 {
            out.info(&format!(
                "{}: no refused connection attempts since the VM started",
                project.display()
            ));
        }
        Ok(ExitCode::SUCCESS)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::TargetArg;

    fn args(mode: Option<&str>, allow: &[u16], remove: &[u16], reset: bool) -> NetSetArgs {
        NetSetArgs {
            target: TargetArg {
                path: None,
                default: false,
            },
            mode: mode.map(str::to_string),
            allow_host_port: allow.to_vec(),
            remove_host_port: remove.to_vec(),
            allow: vec![],
            deny: vec![],
            remove_name: vec![],
            reset,
        }
    }

    #[test]
    fn changes_apply_in_order_and_bad_ones_are_refused() {
        let p = changed(
            NetPolicy::default(),
            NetPolicy::default(),
            &args(None, &[8080, 5432], &[], false),
        )
        .unwrap();
        assert_eq!(p.host_ports, [5432, 8080]);
        let p = changed(
            p,
            NetPolicy::default(),
            &args(Some("none"), &[], &[8080], false),
        )
        .unwrap();
        assert_eq!((p.mode, p.host_ports.as_slice()), (Mode::None, &[5432][..]));
        assert!(describe(&p)[1].1.contains("closed in none mode"));
        // Reset first, then the rest.
        let p = changed(p, NetPolicy::default(), &args(None, &[22], &[], true)).unwrap();
        assert_eq!((p.mode, p.host_ports.as_slice()), (Mode::Open, &[22][..]));
        let err = changed(
            p.clone(),
            NetPolicy::default(),
            &args(None, &[], &[9], false),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("host port 9 is not allowed"),
            "{err}"
        );
        let mut names = args(Some("restricted"), &[], &[], false);
        names.allow = vec!["*.GitHub.com".into(), "pypi.org".into()];
        names.deny = vec!["gist.github.com".into()];
        let p = changed(p, NetPolicy::default(), &names).unwrap();
        assert_eq!(p.mode, Mode::Restricted);
        assert_eq!(p.names.allow, ["*.github.com", "pypi.org"]);
        assert_eq!(p.names.deny, ["gist.github.com"]);
        assert_eq!(describe(&p)[2].1, "*.github.com pypi.org");
        let mut off = args(Some("open"), &[], &[], false);
        off.remove_name = vec!["pypi.org".into()];
        let p = changed(p, NetPolicy::default(), &off).unwrap();
        assert_eq!(p.names.allow, ["*.github.com"]);
        assert!(describe(&p)[2].1.ends_with("(used in restricted mode)"));
        let err = changed(p.clone(), NetPolicy::default(), &off).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
        let mut bad = args(None, &[], &[], false);
        bad.allow = vec!["com".into()];
        let err = changed(p, NetPolicy::default(), &bad).unwrap_err();
        assert!(err.to_string().contains("top-level"), "{err}");
        let many: Vec<u16> = (1..=65).collect();
        assert!(
            changed(
                NetPolicy::default(),
                NetPolicy::default(),
                &args(None, &many, &[], false)
            )
            .is_err()
        );
    }

    #[test]
    fn refusals_print_one_per_line() {
        let d = Denial {
            time: "2026-12-01T06:00:00Z".into(),
            proto: "TCP".into(),
            dest: "192.168.5.2".into(),
            port: Some(5432),
            name: None,
            program: None,
        };
        assert_eq!(line(&d), "2026-12-01T06:00:00Z  TCP   192.168.5.2:5432");
        let named = Denial {
            dest: "192.0.2.9".into(),
            port: Some(443),
            name: Some("evil.example".into()),
            program: Some("curl".into()),
            ..d.clone()
        };
        assert_eq!(
            line(&named),
            "2026-12-01T06:00:00Z  TCP   evil.example (192.0.2.9):443  by curl"
        );
        let dns = Denial {
            proto: "UDP".into(),
            dest: "evil.example".into(),
            port: Some(53),
            name: Some("evil.example".into()),
            ..d.clone()
        };
        assert_eq!(
            line(&dns),
            "2026-12-01T06:00:00Z  UDP   evil.example:53 (DNS)"
        );
        let icmp = Denial {
            proto: "ICMP".into(),
            port: None,
            ..d
        };
        assert_eq!(line(&icmp), "2026-12-01T06:00:00Z  ICMP  192.168.5.2");
    }
}
