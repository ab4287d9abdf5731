//! Race-free TCP ports for listeners that a test hands to another process.

use rand::Rng;

/// The ports [`free_port`] picks from: below the kernel's ephemeral range (32768-60999 by
/// default, `net.ipv4.ip_local_port_range`).
pub const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 for a listener, below the kernel's ephemeral range.
///
/// Outbound connections of parallel tests take their local ports from the ephemeral range, so a
/// port handed out by `bind(0)` (which also comes from that range) could be taken again between
/// the test releasing it and the process under test binding it. A random port below the range is
/// never handed to an outbound connection; it is only checked to be free right now. Within one
/// test process a port is handed out once: a test that asks for an admin port and a listener port
/// before starting anything must get two different ones.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(RANGE);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_port_is_handed_out_once_per_process() {
        let mut seen: Vec<u16> = (0..500).map(|_| super::free_port()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 500);
    }
}
