//! One module per `advmoe` command; each has its flags (`…Args`) and `run`.

pub(crate) mod attack;
pub(crate) mod bench;
pub(crate) mod compare;
pub(crate) mod eval;
pub(crate) mod macs;
pub(crate) mod seeds;
pub(crate) mod train;
