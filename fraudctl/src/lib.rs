//! fraudctl: the commands people run by hand against fraudstream.

pub mod bench;
pub mod broker_bench;
pub mod dlq;
pub mod drift;
pub mod features;
pub mod kafka;
pub mod labels;
pub mod stack;
pub mod synth;
pub mod topics;
pub mod traffic;
