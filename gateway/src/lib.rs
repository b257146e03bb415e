//! fraudstream's gateway: the HTTP API in front of the scoring pipeline.

pub mod config;
pub mod decisions;
pub mod http;
pub mod metrics;
pub mod reader;
pub mod request;
