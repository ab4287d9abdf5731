//! The integration-test harness shared by the workspace's crates (`tern`, `tern-validate`,
//! `tern-sync`): real binaries built with the tests' own cargo and profile, race-free ports,
//! polling waits, config directories, real backends (and a raw-socket one that records the exact
//! bytes it receives), a DNS server, a `tern` process harness, HTTP clients, a real Envoy process
//! (differential tests) and a moto S3 harness. It is a dev-dependency only and is never published.
//!
//! Each module holds one concern; the items most tests need are re-exported here, the S3 harness
//! stays under [`s3`].
#![forbid(unsafe_code)]

pub mod backend;
pub mod bin;
pub mod check;
pub mod client;
pub mod config_dir;
pub mod dns;
pub mod envoy;
pub mod pki;
pub mod ports;
pub mod process;
pub mod raw;
pub mod s3;
pub mod tern;
pub mod wait;

pub use backend::{Backend, BackendCtl, Seen};
pub use bin::{
    binary, tern_bin, tern_sync_bin, tern_validate_bin, workspace_binary, workspace_root,
};
pub use check::{tern_check, tern_check_code, tern_check_fails};
pub use client::{get, http_get, request, wait_body, Resp};
pub use config_dir::{
    admin_yaml, config_files, direct_yaml, forward_config, listener_yaml, write_files, ConfigDir,
};
pub use dns::DnsServer;
pub use envoy::Envoy;
pub use pki::{Ca, Leaf};
pub use ports::free_port;
pub use process::Proc;
pub use raw::{parse_responses, RawBackend, RawConn, RawRequest, RawResponse, Reply};
pub use tern::Tern;
pub use wait::{wait_for, wait_for_within, wait_until, wait_until_within, DEADLINE};
