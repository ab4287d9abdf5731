//! The docker-compose demo's flow, without Docker: the commands and environment of
//! `docker-compose.yml` (as `docker-compose config` resolves them) run as real processes against
//! moto's S3 server (the compose file's `s3` service):
//!
//! 1. `publish` publishes `config-examples/compose` (ports moved to free ones, the demo backend
//!    replaced by a test backend);
//! 2. `tern-sync` syncs it into a directory; its health check (`tern-sync health`) passes;
//! 3. `tern --config DEST/current` answers `/` and proxies `/api/`;
//! 4. editing a file and running `publish` again changes the answer within the agent's poll
//!    interval; publishing an invalid edit is refused and changes nothing.
//!
//! Needs moto (`python3 -m pip install 'moto[server]'`, installed by `scripts/install-test-deps`)
//! and docker-compose (to resolve the file; `apt-get install -y docker-compose`). The `tern-sync`
//! binary is built with the same cargo and profile (or taken from `TERN_SYNC_BIN`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, wait_for, Backend};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker-compose.yml` as the compose client resolves it.
fn compose() -> Value {
    let run = |prog: &str, pre: &[&str]| {
        Command::new(prog)
            .args(pre)
            .args(["-f", "docker-compose.yml", "config"])
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let out = run("docker-compose", &[])
        .or_else(|| run("docker", &["compose"]))
        .unwrap_or_else(|| {
            panic!(
                "`docker-compose -f docker-compose.yml config` failed or docker-compose is not \
                 installed (apt-get install -y docker-compose)"
            )
        });
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("compose config output")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The `tern-sync` binary: `TERN_SYNC_BIN`, else built by cargo with this test's profile.
fn tern_sync_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TERN_SYNC_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args([
        "build",
        "-p",
        "tern-sync",
        "--bin",
        "tern-sync",
        "--message-format=json",
    ]);
    if env!("CARGO_BIN_EXE_tern").contains("/release/") {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build -p tern-sync failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "tern-sync")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no tern-sync executable")
}

/// A child process killed on drop, with its stderr in a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc { child, log }
    }
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `from` in `args` (whole arguments) with `to`.
fn replace_arg(args: &mut [String], from: &str, to: &str) {
    let n = args
        .iter_mut()
        .filter(|a| *a == from)
        .map(|a| *a = to.into())
        .count();
    assert!(n > 0, "{from} not in {args:?}");
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

/// Runs the compose `publish` service's command on `src`; returns (success, output).
fn publish(
    sync_bin: &Path,
    cmd: &[String],
    env: &BTreeMap<String, String>,
    src: &Path,
) -> (bool, String) {
    let mut args = cmd[1..].to_vec();
    replace_arg(&mut args, "/src", src.to_str().unwrap());
    let out = hermetic(Command::new(sync_bin), env)
        .args(&args)
        .output()
        .expect("run tern-sync publish");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The compose service's environment, and nothing from this machine's AWS setup.
fn hermetic(mut c: Command, env: &BTreeMap<String, String>) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("TERN_SYNC_") {
            c.env_remove(k);
        }
    }
    c.envs(env)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_flow_publish_sync_serve_and_republish() {
    let c = compose();
    let services = &c["services"];
    let work = tempfile::tempdir().unwrap();

    // s3: moto, as in the compose file.
    assert!(
        services["s3"]["image"]
            .as_str()
            .unwrap()
            .starts_with("motoserver/moto:"),
        "the compose store is moto"
    );
    let s3_port = free_port();
    let mut moto_cmd = Command::new("python3");
    moto_cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &s3_port.to_string(),
    ]);
    let moto = Proc::spawn(moto_cmd, work.path().join("moto.log"));
    let moto_url = format!("http://127.0.0.1:{s3_port}");
    wait_for(
        &format!("moto on {moto_url} (install: python3 -m pip install 'moto[server]')"),
        || {
            let url = format!("{moto_url}/moto-api/");
            async move {
                common::request("GET", &url, &[], "")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            }
        },
    )
    .await;

    // The environment the compose file gives publish and tern-sync, pointed at this moto.
    let mut env = environment(&services["publish"]);
    assert_eq!(env, environment(&services["tern-sync"]), "same S3 settings");
    env.insert("TERN_SYNC_ENDPOINT_URL".into(), moto_url.clone());
    let health_port = free_port();
    env.insert(
        "TERN_SYNC_HEALTH_ADDRESS".into(),
        format!("127.0.0.1:{health_port}"),
    );

    // create-bucket (the compose job uses the AWS CLI; boto3 comes with moto).
    let bucket = &env["TERN_SYNC_BUCKET"];
    let st = hermetic(Command::new("python3"), &env)
        .args([
            "-c",
            "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])",
            &moto_url,
            bucket,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "create bucket; moto log:\n{}", moto.logs());

    // The example, with its ports moved and the demo backend replaced.
    let backend = Backend::start("demo-backend").await;
    let listen = free_port();
    let admin = free_port();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for entry in std::fs::read_dir(root().join("config-examples/compose")).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("0.0.0.0:10000", &format!("127.0.0.1:{listen}"))
            .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"))
            .replace("backend:5678", &backend.addr.to_string());
        std::fs::write(src.join(p.file_name().unwrap()), text).unwrap();
    }

    // publish
    let sync_bin = tern_sync_binary();
    let help = Command::new(&sync_bin).arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("publish"),
        "{} has no `publish`: the sync agent is not on this tree yet",
        sync_bin.display()
    );
    let publish_cmd = strings(&services["publish"]["command"]);
    assert_eq!(publish_cmd[0], "tern-sync");
    let (ok, out) = publish(&sync_bin, &publish_cmd, &env, &src);
    assert!(ok, "publish failed:\n{out}");

    // tern-sync run, then its health check (the compose health check command).
    let dest = work.path().join("config");
    let mut run_args = strings(&services["tern-sync"]["command"]);
    assert_eq!(run_args[0], "tern-sync");
    let compose_dest = flag(&run_args, "--dest").expect("--dest");
    replace_arg(&mut run_args, &compose_dest, dest.to_str().unwrap());
    let interval = tern::config::Dur::parse(&flag(&run_args, "--interval").expect("--interval"))
        .unwrap()
        .0;
    let mut agent_cmd = hermetic(Command::new(&sync_bin), &env);
    agent_cmd.args(&run_args[1..]);
    let agent = Proc::spawn(agent_cmd, work.path().join("agent.log"));
    let health = strings(&services["tern-sync"]["healthcheck"]["test"]);
    assert_eq!(health[..2], ["CMD", "tern-sync"]);
    let start = Instant::now();
    while !hermetic(Command::new(&sync_bin), &env)
        .args(&health[2..])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < common::DEADLINE,
            "tern-sync never became healthy:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // tern, with the compose command (its --config is under the agent's --dest).
    let mut tern_args = strings(&services["tern"]["command"]);
    assert_eq!(tern_args[0], "tern");
    let compose_config = flag(&tern_args, "--config").expect("--config");
    let rel = Path::new(&compose_config)
        .strip_prefix(&compose_dest)
        .expect("tern reads under tern-sync's --dest");
    replace_arg(
        &mut tern_args,
        &compose_config,
        dest.join(rel).to_str().unwrap(),
    );
    let mut tern_cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    tern_cmd.args(&tern_args[1..]).env_remove("RUST_LOG");
    let tern = Proc::spawn(tern_cmd, work.path().join("tern.log"));
    let ready = format!("http://127.0.0.1:{admin}/ready");
    wait_for(&format!("tern /ready (log {})", tern.log.display()), || {
        let url = ready.clone();
        async move {
            common::request("GET", &url, &[], "")
                .await
                .ok()
                .filter(|r| r.status == 200)
        }
    })
    .await;

    let base = format!("http://127.0.0.1:{listen}");
    let r = common::get(&format!("{base}/"), &[]).await;
    assert!(r.body.contains("version 1"), "{}", r.body);
    let r = common::get(&format!("{base}/api/hello"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""uri":"/hello""#), "{}", r.body);

    // Edit, publish again: the answer changes within the poll interval (plus reload time).
    let routes = src.join("routes.yaml");
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&routes, text.replace("version 1", "version 2")).unwrap();
    let (ok, out) = publish(&sync_bin, &publish_cmd, &env, &src);
    assert!(ok, "second publish failed:\n{out}");
    let published = Instant::now();
    common::wait_body(&format!("{base}/"), &[], "version 2").await;
    let took = published.elapsed();
    assert!(
        took < interval + Duration::from_secs(2),
        "the new answer took {took:?} with a poll interval of {interval:?}"
    );

    // An invalid edit is refused by publish with file:line:col; the answer stays.
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(
        &routes,
        text.replace("version 2", "version 3")
            .replace("cluster: backend", "cluster: nope"),
    )
    .unwrap();
    let (ok, out) = publish(&sync_bin, &publish_cmd, &env, &src);
    assert!(!ok, "an invalid configuration was published:\n{out}");
    assert!(out.contains("routes.yaml:"), "{out}");
    let r = common::get(&format!("{base}/"), &[]).await;
    assert!(r.body.contains("version 2"), "{}", r.body);
    drop((tern, agent, moto));
}
