//! Loopback ports for tests that start real processes.
//!
//! A port taken from `bind(":0")` and released again comes from the kernel's ephemeral
//! range, the same range every outgoing connection's local port comes from: with clients
//! connecting in parallel tests, the port can be in use again before the process that was
//! meant to listen on it binds it (CI saw "Address already in use" this way). These ports
//! come from below the ephemeral range instead, spread by process id, and never twice
//! from one process.
//!
//! Shared by the broker's tests and benches and the operator's e2e (through `#[path]`).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The range handed out: `[10000, low end of the ephemeral range)`, or above its high
/// end when the low end is configured too low to leave room.
fn range() -> (u32, u32) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if lo >= 12_000 {
        (10_000, lo)
    } else {
        (hi + 1, 65_535)
    }
}

/// A loopback port nothing listens on, outside the ephemeral range.
pub fn free_port() -> u16 {
    let (lo, hi) = range();
    let span = hi - lo;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = lo + (start + n) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}
