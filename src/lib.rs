//! Tern: an L7/L4 proxy configured by a directory of YAML files.
pub mod config;
