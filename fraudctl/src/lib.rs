//! fraudctl: the commands people run by hand against fraudstream.

pub mod synth;
