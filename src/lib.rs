//! Tern: an L7/L4 proxy configured by a directory of YAML files, with atomic hot reload.
//!
//! Data flows one way: `config` (files → checked model) → `snapshot` (immutable runtime tables)
//! → the request path (`listener` → `proxy` → `router` → `cluster`/`lb`).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod cluster;
pub mod fault;
pub mod headers;
pub mod health;
pub mod lb;
pub mod listener;
pub mod logging;
pub mod otlp;
pub mod outlier;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod tcp;
pub mod timer;
pub mod trace;
pub mod upgrade;
pub mod watch;
