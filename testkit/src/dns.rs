//! A real DNS server on a loopback UDP port, for service discovery tests: A and AAAA records with
//! TTLs that a test changes while the proxy runs, NXDOMAIN for names it does not hold, NODATA for
//! a family a name has no record of (both with an SOA whose 1 s minimum is the negative TTL), and
//! an outage switch (no answer, or SERVFAIL).
//!
//! The wire format is hickory-proto's; the answers are what a recursive resolver (the VPC
//! resolver, Cloud Map) would give: authoritative-looking, recursion available, the query echoed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// How the server treats queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer from the records (the default).
    #[default]
    Answer,
    /// Answer nothing: the resolver times out.
    Silent,
    /// Answer SERVFAIL.
    ServFail,
}

#[derive(Debug, Default)]
struct Zone {
    names: HashMap<String, Vec<(IpAddr, u32)>>,
    mode: Mode,
    queries: HashMap<String, usize>,
}

/// A DNS server on `127.0.0.1`, stopped on drop.
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts an empty server (every name is NXDOMAIN until [`DnsServer::set`]).
    pub async fn start() -> DnsServer {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        DnsServer { addr, zone, task }
    }

    /// The `dns.resolvers` entry that points at it.
    pub fn resolver(&self) -> String {
        self.addr.to_string()
    }

    /// Replaces the records of `name` with `addrs` (IPv4: A, IPv6: AAAA), each with `ttl` seconds.
    /// An empty list keeps the name (NODATA); [`DnsServer::remove`] makes it NXDOMAIN.
    pub fn set(&self, name: &str, addrs: &[&str], ttl: u32) {
        let records = addrs
            .iter()
            .map(|a| (a.parse::<IpAddr>().expect("an IP address"), ttl))
            .collect();
        self.zone.lock().unwrap().names.insert(key(name), records);
    }

    /// Removes `name`: queries for it get NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.zone.lock().unwrap().names.remove(&key(name));
    }

    /// Sets how queries are treated.
    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = mode;
    }

    /// Queries received for `name` (any type).
    pub fn queries(&self, name: &str) -> usize {
        let z = self.zone.lock().unwrap();
        z.queries.get(&key(name)).copied().unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one datagram, or `None` (not a query, or silent mode).
fn answer(zone: &Mutex<Zone>, datagram: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(datagram).ok()?;
    let q = req.queries.first()?.clone();
    let name = key(&q.name.to_ascii());
    let mut z = zone.lock().unwrap();
    *z.queries.entry(name.clone()).or_default() += 1;
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    match (z.mode, z.names.get(&name)) {
        (Mode::Silent, _) => return None,
        (Mode::ServFail, _) => resp.metadata.response_code = ResponseCode::ServFail,
        (Mode::Answer, None) => resp.metadata.response_code = ResponseCode::NXDomain,
        (Mode::Answer, Some(records)) => {
            let before = resp.answers.len();
            for (ip, ttl) in records {
                let data = match (ip, q.query_type) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name.clone(), *ttl, data));
            }
            if resp.answers.len() > before {
                return resp.to_vec().ok();
            }
        }
    }
    if resp.metadata.response_code != ResponseCode::ServFail {
        // NXDOMAIN and NODATA carry the zone's SOA: its minimum is the negative TTL.
        let root = Name::root();
        let soa = SOA::new(root.clone(), root.clone(), 1, 60, 60, 600, 1);
        resp.add_authority(Record::from_rdata(root, 1, RData::SOA(soa)));
    }
    resp.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii(name).unwrap(),
            t,
        ));
        m.to_vec().unwrap()
    }

    async fn ask(s: &DnsServer, name: &str, t: RecordType) -> Option<Message> {
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&query(name, t), s.addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_millis(300), c.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(Message::from_vec(&buf[..n]).unwrap())
    }

    #[tokio::test]
    async fn answers_records_nxdomain_nodata_and_outages() {
        let s = DnsServer::start().await;
        s.set("Svc.Test.", &["10.0.0.1", "10.0.0.2", "fd00::1"], 7);
        let r = ask(&s, "svc.test.", RecordType::A).await.unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].ttl, 7);
        let r = ask(&s, "svc.test.", RecordType::AAAA).await.unwrap();
        assert_eq!(r.answers.len(), 1);
        s.set("v4.test", &["10.0.0.3"], 1);
        let r = ask(&s, "v4.test.", RecordType::AAAA).await.unwrap();
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0),
            "NODATA"
        );
        s.remove("svc.test");
        let r = ask(&s, "svc.test.", RecordType::A).await.unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        s.set_mode(Mode::ServFail);
        let r = ask(&s, "v4.test.", RecordType::A).await.unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        s.set_mode(Mode::Silent);
        assert!(ask(&s, "v4.test.", RecordType::A).await.is_none());
        assert_eq!(s.queries("svc.test"), 3);
        // Garbage is not answered (and does not stop the server).
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"\x01\x02", s.addr).await.unwrap();
        s.set_mode(Mode::Answer);
        assert!(ask(&s, "v4.test.", RecordType::A).await.is_some());
    }
}
