//! The bottom layer: arithmetic and data structures that know nothing of allocation
//! strategies (byte counts and their formatting, an ordered map of address ranges,
//! a table of records named by reusable ids, a set of bits, per-granule pass stamps,
//! clocks, the synchronisation primitives that loom can swap out, the per-thread
//! block of words read on every operation and the mark of being inside the
//! process-wide allocator kept there, descriptors kept open inside a program, the
//! process's resource limits, a block moved within any `Allocator`, and reports on standard error that cannot fail). Nothing here uses another module of the crate.

pub mod address_map;
pub(crate) mod bits;
pub mod bytes;
pub mod clock;
pub mod fd;
pub(crate) mod id_table;
pub(crate) mod reentry;
pub(crate) mod relocate;
pub(crate) mod rlimit;
pub(crate) mod stamps;
pub(crate) mod stderr;
pub(crate) mod sync;
pub(crate) mod thread_block;
