//! tern-storage: the broker's embedded store.
//!
//! The store lives in one data directory, opened by one broker at a time. It records a
//! format marker on creation, so that a directory which is not a tern store, or was
//! written by an incompatible version, is refused with a clear error instead of being
//! silently reused or wiped.
//!
//! sled is the engine. Nothing outside this crate sees a `sled::Tree`: callers use domain
//! operations only.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod error;
mod sled_store;

pub use error::StorageError;
pub use sled_store::SledStore;

/// The on-disk format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;
