//! A stand-in host agent for `tests/bench/ssh-bench`: it serves, with the
//! host agent's own library calls, either the API on `ha.sock`
//! (`LLIMA_BOX_BENCH_SERVE=api`, reporting `LLIMA_BOX_BENCH_PORT`) or
//! `mux.sock` (`=mux`) for an instance whose guest is a local sshd, until
//! it is killed.

use std::time::Duration;

use llima_box::testing::vm::layout;

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        eprintln!("bench-host-agent: {k} is unset (run by tests/bench/ssh-bench)");
        std::process::exit(2)
    })
}

fn main() {
    let home = std::path::PathBuf::from(var("LLIMA_BOX_BENCH_HOME"));
    let name = var("LLIMA_BOX_BENCH_INSTANCE");
    let dir = home.join(&name);
    let rt = llima_box::testing::async_runtime::new().expect("tokio runtime");
    rt.block_on(async {
        match var("LLIMA_BOX_BENCH_SERVE").as_str() {
            "api" => {
                use llima_box::testing::vm::{hostagent::api, store::Info};
                let listener = api::bind(&dir.join(layout::HOST_AGENT_SOCK)).expect("bind ha.sock");
                let port = var("LLIMA_BOX_BENCH_PORT").parse().expect("a port number");
                api::serve(
                    listener,
                    Info {
                        ssh_local_port: port,
                        ..Default::default()
                    },
                )
                .await;
            }
            "mux" => {
                let (opts, _) = llima_box::testing::vm::access::connect_options(
                    &home,
                    &name,
                    Duration::from_secs(10),
                    None,
                )
                .expect("the instance is reachable");
                let path = dir.join(layout::MUX_SOCK);
                let listener = llima_box::testing::ssh::mux::bind(&path).expect("bind mux.sock");
                llima_box::testing::ssh::mux::serve(listener, opts).await;
            }
            other => {
                eprintln!("LLIMA_BOX_BENCH_SERVE={other:?}: expected api or mux");
                std::process::exit(2)
            }
        }
    });
}
