//! Tern: an L7/L4 proxy configured by a directory of YAML files, with atomic hot reload.
//!
//! Data flows one way: `config` (files → checked model) → `snapshot` (immutable runtime tables)
//! → the request path (`listener` → `proxy` → `router` → `cluster`/`lb`).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod headers;
pub mod listener;
pub mod logging;
pub mod otlp;
pub mod proxy;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod stream_info;
pub mod tcp;
pub mod timer;
pub mod trace;
pub mod upstream;
pub mod watch;
