//! fraudstream's gateway: the HTTP API in front of the scoring pipeline.

pub mod request;
