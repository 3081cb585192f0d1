//! Linux DMA-BUF for user space.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod inspect;
pub mod sys;

pub use error::{Error, ErrorKind, Result};
