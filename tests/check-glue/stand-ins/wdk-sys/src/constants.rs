//! Constants: bindgen's `VARS` (`#define`s and extern data), `POOL_FLAG_*` (written by
//! hand in the real crate too: bindgen cannot read MSVC's `ui64` suffixes) and `STATUS_*`
//! as `NTSTATUS`, generated from mingw's ntstatus.h (the real crate hand-writes them;
//! ntstatus.h's casts are beyond bindgen). Explicit items here shadow the glob import.

#![allow(missing_docs)]

pub use crate::declared::constants::*;
pub use bindings::*;
pub use kernel_mode::*;

use crate::types::NTSTATUS;

#[allow(
    dead_code,
    unused_imports,
    non_upper_case_globals,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks
)]
mod bindings {
    #[allow(clippy::wildcard_imports)]
    use crate::types::*;

    include!(concat!(env!("OUT_DIR"), "/constants.rs"));
}

/// `POOL_FLAG_*` (wdm.h), as `POOL_FLAGS`.
mod kernel_mode {
    use crate::types::POOL_FLAGS;

    pub const POOL_FLAG_REQUIRED_START: POOL_FLAGS = 0x0000_0000_0000_0001;
    pub const POOL_FLAG_USE_QUOTA: POOL_FLAGS = 0x0000_0000_0000_0001;
    pub const POOL_FLAG_UNINITIALIZED: POOL_FLAGS = 0x0000_0000_0000_0002;
    pub const POOL_FLAG_SESSION: POOL_FLAGS = 0x0000_0000_0000_0004;
    pub const POOL_FLAG_CACHE_ALIGNED: POOL_FLAGS = 0x0000_0000_0000_0008;
    pub const POOL_FLAG_RESERVED1: POOL_FLAGS = 0x0000_0000_0000_0010;
    pub const POOL_FLAG_RAISE_ON_FAILURE: POOL_FLAGS = 0x0000_0000_0000_0020;
    pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0000_0000_0040;
    pub const POOL_FLAG_NON_PAGED_EXECUTE: POOL_FLAGS = 0x0000_0000_0000_0080;
    pub const POOL_FLAG_PAGED: POOL_FLAGS = 0x0000_0000_0000_0100;
    pub const POOL_FLAG_RESERVED2: POOL_FLAGS = 0x0000_0000_0000_0200;
    pub const POOL_FLAG_RESERVED3: POOL_FLAGS = 0x0000_0000_0000_0400;
    pub const POOL_FLAG_REQUIRED_END: POOL_FLAGS = 0x0000_0000_8000_0000;
    pub const POOL_FLAG_OPTIONAL_START: POOL_FLAGS = 0x0000_0001_0000_0000;
    pub const POOL_FLAG_SPECIAL_POOL: POOL_FLAGS = 0x0000_0001_0000_0000;
    pub const POOL_FLAG_OPTIONAL_END: POOL_FLAGS = 0x8000_0000_0000_0000;
}

include!(concat!(env!("OUT_DIR"), "/ntstatus.rs"));
