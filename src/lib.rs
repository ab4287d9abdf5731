//! Tern: an L7/L4 proxy configured by a directory of YAML files, with atomic hot reload.
//!
//! Data flows one way: `tern_config` (files → checked model) → `snapshot` (immutable runtime
//! tables) → the request path (`listener` → `proxy` → `router` → `upstream`). The module map,
//! the layers (what may import what) and the request and reload flows are in
//! `docs/architecture.md`; `tests/architecture.rs` keeps the imports to it.
#![forbid(unsafe_code)]

pub(crate) mod access_log;
pub(crate) mod admin;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod grpc;
pub(crate) mod headers;
pub(crate) mod http1;
pub(crate) mod listener;
pub mod logging;
pub(crate) mod message;
pub(crate) mod otlp;
pub(crate) mod overload;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod router;
pub mod server;
pub(crate) mod snapshot;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod stream_info;
pub(crate) mod tcp;
pub(crate) mod timer;
pub(crate) mod tls;
pub(crate) mod trace;
pub(crate) mod upstream;
pub mod watch;

pub use stats::set_recording;
