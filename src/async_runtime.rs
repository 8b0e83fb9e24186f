//! The async runtime, built the same way by every process that needs one:
//! the CLI's SSH sessions, the host agent and the benchmarks' stand-in.

/// Multi-threaded, because the host agent calls `block_in_place`, which a
/// current-thread runtime refuses; two workers, because the work is waiting
/// on sockets, not computing.
pub fn new() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
