//! Live conflict events: what the kernel programs report for every refused or audited
//! `connect()`, told for people or as JSON lines.
//!
//! - [`record`]: the kernel's event decoded, its time on the wall clock, the printed records;
//! - [`holder`]: who already holds the tuple (sock_diag + `/proc/*/fd`), best effort;
//! - [`flood`]: a burst is shown, the rest of a flood summarised;
//! - [`format`]: the human line and the JSON line;
//! - [`stream`]: following an attachment's ring buffer and printing as events come.
pub mod fanout;
pub mod flood;
pub mod format;
pub mod holder;
pub mod record;
pub mod stream;

pub use stream::stream;
