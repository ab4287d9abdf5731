//! DNS service discovery through a real `tern` process: a real DNS server on a loopback UDP port
//! (the test kit's, pointed at with `dns.resolvers`) whose records and TTLs change during the
//! test, and real backends on 127.0.0.1, 127.0.0.2 and 127.0.0.3 behind one port, as the tasks of
//! an ECS service behind a Cloud Map name.

use std::net::SocketAddr;

use tern_testkit::{
    admin_yaml, free_port, get, listener_yaml, wait_for, Backend, ConfigDir, DnsServer, Tern,
};

const NAME: &str = "svc.test";

/// A port free on 127.0.0.1-127.0.0.4, for backends that share it.
fn shared_port() -> u16 {
    loop {
        let port = free_port();
        if (1..=4).all(|i| std::net::TcpListener::bind(format!("127.0.0.{i}:{port}")).is_ok()) {
            return port;
        }
    }
}

/// Backend `name` on 127.0.0.`i`:`port`.
async fn backend(name: &str, i: u8, port: u16, keep_alive: bool) -> Backend {
    let addr: SocketAddr = format!("127.0.0.{i}:{port}").parse().unwrap();
    Backend::start_on(name, addr, keep_alive).await
}

struct Setup {
    tern: Tern,
    port: u16,
    cfg: ConfigDir,
    bport: u16,
}

/// The cluster file: `svc` on `svc.test:<bport>` with `extra` lines (indented 4 spaces).
fn clusters_yaml(bport: u16, extra: &str) -> String {
    format!("clusters:\n  - name: svc\n    endpoints: [{{ address: \"{NAME}:{bport}\" }}]\n{extra}")
}

/// Starts tern routing everything to cluster `svc`, resolved by `dns`.
async fn start(dns: &DnsServer, bport: u16, extra: &str) -> Setup {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listeners.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write(
        "routes.yaml",
        "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            route: { cluster: svc, timeout: 15s }\n",
    );
    cfg.write(
        "dns.yaml",
        &format!(
            "dns:\n  resolvers: [\"{}\"]\n  timeout: 200ms\n  attempts: 1\n",
            dns.resolver()
        ),
    );
    cfg.write("clusters.yaml", &clusters_yaml(bport, extra));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Setup {
        tern,
        port,
        cfg,
        bport,
    }
}

impl Setup {
    /// Sends `n` requests; the `x-backend` of each (or `status:<code>` without one).
    async fn hits(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = get(&format!("http://127.0.0.1:{}/x", self.port), &[]).await;
            out.push(match r.headers.get("x-backend") {
                Some(b) => b.to_str().unwrap().to_string(),
                None => format!("status:{}", r.status),
            });
        }
        out
    }

    /// `svc`'s hosts in `/clusters?format=json`.
    async fn hosts(&self) -> Vec<serde_json::Value> {
        let r = get(&self.tern.admin_url("/clusters?format=json"), &[]).await;
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        j["cluster_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "svc")
            .unwrap()["host_statuses"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The addresses `svc` has now, sorted.
    async fn addresses(&self) -> Vec<String> {
        let mut a: Vec<String> = self
            .hosts()
            .await
            .iter()
            .map(|h| h["address"].as_str().unwrap().to_string())
            .collect();
        a.sort();
        a
    }

    /// `127.0.0.<i>:<bport>` for each `i`.
    fn addrs(&self, ips: &[u8]) -> Vec<String> {
        ips.iter()
            .map(|i| format!("127.0.0.{i}:{}", self.bport))
            .collect()
    }

    /// Waits until `svc` has exactly the endpoints `127.0.0.<i>`.
    async fn wait_addresses(&self, ips: &[u8]) {
        let want = self.addrs(ips);
        wait_for(&format!("svc endpoints {want:?}"), || async {
            (self.addresses().await == want).then_some(())
        })
        .await
    }

    /// The health flags of `svc`'s endpoint `127.0.0.<i>` (`None`: not an endpoint now).
    async fn flags(&self, i: u8) -> Option<Vec<String>> {
        let a = format!("127.0.0.{i}:{}", self.bport);
        let hosts = self.hosts().await;
        let h = hosts.iter().find(|h| h["address"] == a.as_str())?;
        Some(
            h["health_status"]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect(),
        )
    }

    async fn stat(&self, name: &str) -> i64 {
        self.tern.stat(&format!("cluster.svc.{name}")).await
    }

    async fn wait_stat(&self, name: &str, min: i64) {
        wait_for(&format!("{name} >= {min}"), || async {
            (self.stat(name).await >= min).then_some(())
        })
        .await
    }
}

fn count(hits: &[String], who: &str) -> usize {
    hits.iter().filter(|h| *h == who).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_is_an_endpoint_and_a_removed_one_finishes_its_requests() {
    let bport = shared_port();
    let a = backend("a", 1, bport, true).await;
    let b = backend("b", 2, bport, true).await;
    let c = backend("c", 3, bport, true).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], 1);
    let s = start(&dns, bport, "    dns_refresh_rate: 1s\n").await;

    // Resolved before the configuration served: the first requests are balanced over all three.
    let h = s.hits(6).await;
    assert_eq!(
        (count(&h, "a"), count(&h, "b"), count(&h, "c")),
        (2, 2, 2),
        "{h:?}"
    );
    assert_eq!(s.addresses().await, s.addrs(&[1, 2, 3]));
    let text = get(&s.tern.admin_url("/clusters"), &[]).await.body;
    for i in 1..=3 {
        let line = format!("svc::127.0.0.{i}:{bport}::hostname::{NAME}");
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    assert_eq!(s.stat("membership_total").await, 3);
    assert!(s.stat("update_success").await >= 1);
    assert!(s.stat("update_attempt").await >= 1);
    assert_eq!(s.stat("update_failure").await, 0);
    let prom = get(&s.tern.admin_url("/stats/prometheus"), &[]).await.body;
    assert!(
        prom.contains(&format!(
            "tern_endpoint_rq_total{{cluster=\"svc\",endpoint=\"127.0.0.1:{bport}\"}} 2"
        )),
        "{prom}"
    );

    // Concurrent requests leave two or more idle pooled connections to each task.
    let slow = format!("http://127.0.0.1:{}/slow?ms=600", s.port);
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let u = slow.clone();
            tokio::spawn(async move { get(&u, &[]).await.status })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), 200);
    }
    let open = |x: &Backend| x.open.load(std::sync::atomic::Ordering::SeqCst);
    assert!([&a, &b, &c].iter().all(|x| open(x) >= 2));

    // A request in flight to one task, then that task leaves DNS (scale-in, deploy).
    let url = format!("http://127.0.0.1:{}/hold", s.port);
    let inflight = tokio::spawn(async move { get(&url, &[]).await });
    let backends = [&a, &b, &c];
    let gone = wait_for("the held request to arrive", || async {
        backends.iter().position(|x| x.ctl.held() == 1)
    })
    .await;
    let names = ["a", "b", "c"];
    let keep: Vec<&str> = (0..3)
        .filter(|&i| i != gone)
        .map(|i| ["127.0.0.1", "127.0.0.2", "127.0.0.3"][i])
        .collect();
    dns.set(NAME, &keep, 1);
    let changes = s.stat("membership_change").await;
    let kept: Vec<u8> = (1..=3).filter(|&i| i as usize != gone + 1).collect();
    s.wait_addresses(&kept).await;
    assert_eq!(s.stat("membership_change").await, changes + 1);
    assert_eq!(s.stat("membership_total").await, 2);

    // Its idle connections close at once; the one in flight stays.
    wait_for("the removed task's idle connections to close", || async {
        (open(backends[gone]) == 1).then_some(())
    })
    .await;

    // No new request goes there; the one in flight finishes.
    let h = s.hits(6).await;
    assert_eq!(count(&h, names[gone]), 0, "{h:?}");
    assert_eq!(h.len(), 6);
    assert!(!inflight.is_finished());
    backends[gone].ctl.release_holds();
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-backend"], names[gone]);
    // The connection that served it is not pooled again.
    wait_for("the removed task's last connection to close", || async {
        (open(backends[gone]) == 0).then_some(())
    })
    .await;
    // The tasks that stayed keep their warm connections.
    assert!((0..3)
        .filter(|&i| i != gone)
        .all(|i| open(backends[i]) >= 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_honoured_outages_keep_the_last_answer_and_nxdomain_empties_the_cluster() {
    let bport = shared_port();
    let a = backend("a", 1, bport, true).await;
    let _b = backend("b", 2, bport, true).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.1"], 1);
    // A refresh rate far beyond the test's waits: only the 1 s TTL can make tern ask again.
    let s = start(
        &dns,
        bport,
        "    dns_refresh_rate: 60s\n    dns_failure_refresh_rate: { base_interval: 100ms, max_interval: 300ms }\n",
    )
    .await;
    assert_eq!(s.hits(2).await, ["a", "a"]);

    dns.set(NAME, &["127.0.0.2"], 1);
    s.wait_addresses(&[2]).await;
    assert_eq!(s.hits(2).await, ["b", "b"]);

    // DNS down (no answer at all): failures are counted, the last answer keeps serving.
    let failures = s.stat("update_failure").await;
    dns.set_mode(tern_testkit::dns::Mode::Silent);
    s.wait_stat("update_failure", failures + 2).await;
    assert_eq!(s.hits(3).await, ["b", "b", "b"]);
    // SERVFAIL is a failure too, not an empty answer.
    dns.set_mode(tern_testkit::dns::Mode::ServFail);
    let failures = s.stat("update_failure").await;
    s.wait_stat("update_failure", failures + 2).await;
    assert_eq!(s.hits(2).await, ["b", "b"]);
    assert_eq!(s.stat("update_empty").await, 0);
    assert_eq!(s.addresses().await, s.addrs(&[2]));

    // NXDOMAIN: the service is gone, as Envoy has it: no endpoint, 503.
    dns.remove(NAME);
    dns.set_mode(tern_testkit::dns::Mode::Answer);
    s.wait_addresses(&[]).await;
    let r = get(&format!("http://127.0.0.1:{}/x", s.port), &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("no healthy upstream"), "{}", r.body);
    assert!(s.stat("update_empty").await >= 1);
    assert_eq!(s.stat("membership_total").await, 0);

    // And back.
    dns.set(NAME, &["127.0.0.1"], 1);
    s.wait_addresses(&[1]).await;
    assert_eq!(s.hits(1).await, ["a"]);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_one_task_of_three() {
    let bport = shared_port();
    let _a = backend("a", 1, bport, true).await;
    let b = backend("b", 2, bport, true).await;
    let _c = backend("c", 3, bport, true).await;
    b.ctl.set_status(503);
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], 30);
    let s = start(
        &dns,
        bport,
        "    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 60s, max_ejection_percent: 34 }\n",
    )
    .await;
    let h = s.hits(9).await;
    assert_eq!(count(&h, "status:503") + count(&h, "b"), 3, "{h:?}");
    assert_eq!(s.flags(2).await.unwrap(), ["failed_outlier_check"]);
    assert!(s.flags(1).await.unwrap().is_empty());
    assert!(s.flags(3).await.unwrap().is_empty());
    assert_eq!(s.stat("outlier_detection_ejections_active").await, 1);
    assert_eq!(s.stat("membership_healthy").await, 2);
    let h = s.hits(6).await;
    assert!(count(&h, "a") >= 1 && count(&h, "c") >= 1, "{h:?}");
    assert_eq!(count(&h, "a") + count(&h, "c"), 6, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_addresses() {
    let bport = shared_port();
    let a = backend("a", 1, bport, true).await;
    let b = backend("b", 2, bport, true).await;
    let c = backend("c", 3, bport, true).await;
    let d = backend("d", 4, bport, true).await;
    c.ctl.set_hc_status(503);
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], 1);
    let s = start(
        &dns,
        bport,
        "    dns_refresh_rate: 1s\n    health_checks:\n      - http: { path: /_hc }\n        interval: 100ms\n        timeout: 100ms\n        unhealthy_threshold: 1\n        healthy_threshold: 1\n",
    )
    .await;
    // Each address is checked on its own: c fails, a and b pass.
    wait_for("c unhealthy, a and b healthy", || async {
        let ok = s.flags(1).await? == Vec::<String>::new()
            && s.flags(2).await? == Vec::<String>::new()
            && s.flags(3).await? == ["failed_active_hc"];
        ok.then_some(())
    })
    .await;
    assert!(a.ctl.hc_requests() >= 1 && b.ctl.hc_requests() >= 1 && c.ctl.hc_requests() >= 1);
    let h = s.hits(6).await;
    assert!(count(&h, "a") >= 1 && count(&h, "b") >= 1, "{h:?}");
    assert_eq!(count(&h, "a") + count(&h, "b"), 6, "{h:?}");

    // A task that joins is checked before it takes traffic; one that leaves is no longer checked.
    dns.set(
        NAME,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
        1,
    );
    s.wait_addresses(&[1, 2, 3, 4]).await;
    wait_for("d healthy", || async {
        (s.flags(4).await? == Vec::<String>::new()).then_some(())
    })
    .await;
    assert!(d.ctl.hc_requests() >= 1);
    let h = s.hits(9).await;
    assert!(count(&h, "d") >= 1 && count(&h, "c") == 0, "{h:?}");
    dns.set(NAME, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], 1);
    s.wait_addresses(&[1, 2, 3]).await;
    let after = d.ctl.hc_requests();
    let a_before = a.ctl.hc_requests();
    wait_for("a few more check rounds", || async {
        (a.ctl.hc_requests() >= a_before + 5).then_some(())
    })
    .await;
    // At most the check that was under way when d left.
    assert!(d.ctl.hc_requests() <= after + 1, "d still checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_resolved_endpoints_and_their_state() {
    let bport = shared_port();
    let _a = backend("a", 1, bport, true).await;
    let b = backend("b", 2, bport, true).await;
    let _c = backend("c", 3, bport, true).await;
    b.ctl.set_status(503);
    let dns = DnsServer::start().await;
    // TTL and refresh far beyond the test: tern asks DNS again only if something makes it.
    dns.set(NAME, &["127.0.0.1", "127.0.0.2", "127.0.0.3"], 300);
    let od = "    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 60s, max_ejection_percent: 34 }\n    dns_refresh_rate: 60s\n";
    let s = start(&dns, bport, od).await;
    s.hits(9).await;
    assert_eq!(s.flags(2).await.unwrap(), ["failed_outlier_check"]);
    let queries = dns.queries(NAME);
    let total = |hosts: Vec<serde_json::Value>| -> u64 {
        hosts
            .iter()
            .map(|h| h["stats"]["rq_total"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(s.hosts().await), 9);

    // A change that is not about discovery: a new cluster version with the same answers.
    let reloads = s.tern.stat("server.config_update_success").await;
    s.cfg.write(
        "clusters.yaml",
        &clusters_yaml(bport, &format!("{od}    connect_timeout: 2s\n")),
    );
    wait_for("the reload", || async {
        (s.tern.stat("server.config_update_success").await > reloads).then_some(())
    })
    .await;
    assert_eq!(s.addresses().await, s.addrs(&[1, 2, 3]));
    assert_eq!(s.flags(2).await.unwrap(), ["failed_outlier_check"]);
    assert_eq!(total(s.hosts().await), 9);
    assert_eq!(
        dns.queries(NAME),
        queries,
        "the answers were carried, not asked again"
    );
    let h = s.hits(4).await;
    assert_eq!(count(&h, "b") + count(&h, "status:503"), 0, "{h:?}");

    // Other discovery settings: the name is resolved again at once, the state stays by address.
    let reloads = s.tern.stat("server.config_update_success").await;
    s.cfg.write(
        "clusters.yaml",
        &clusters_yaml(bport, &format!("{od}    dns_lookup_family: v4_only\n")),
    );
    wait_for("the reload", || async {
        (s.tern.stat("server.config_update_success").await > reloads).then_some(())
    })
    .await;
    assert!(dns.queries(NAME) > queries);
    assert_eq!(s.addresses().await, s.addrs(&[1, 2, 3]));
    assert_eq!(s.flags(2).await.unwrap(), ["failed_outlier_check"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dns_connects_to_the_first_address_of_the_latest_answer() {
    let bport = shared_port();
    // No keep-alive: every request opens a connection, so each one shows where new ones go.
    let _a = backend("a", 1, bport, false).await;
    let _b = backend("b", 2, bport, false).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.1", "127.0.0.2"], 1);
    let s = start(
        &dns,
        bport,
        "    type: logical_dns\n    dns_refresh_rate: 1s\n",
    )
    .await;
    assert_eq!(s.hits(3).await, ["a", "a", "a"]);
    let hosts = s.hosts().await;
    assert_eq!(hosts.len(), 1, "one logical endpoint");
    assert_eq!(hosts[0]["hostname"], NAME);
    dns.set(NAME, &["127.0.0.2", "127.0.0.1"], 1);
    wait_for("new connections to go to b", || async {
        (s.hits(1).await == ["b"]).then_some(())
    })
    .await;
    let hosts = s.hosts().await;
    assert_eq!(hosts.len(), 1);
    // One endpoint whose state went along: every request is counted on it.
    assert!(hosts[0]["stats"]["rq_total"].as_u64().unwrap() >= 4);
    assert_eq!(s.stat("membership_total").await, 1);
    // An empty answer does not take the logical endpoint away (Envoy).
    dns.remove(NAME);
    s.wait_stat("update_empty", 1).await;
    assert_eq!(s.hits(1).await, ["b"]);
}
