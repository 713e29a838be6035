//! Consumer lag, judged as Burrow judges it: the rules (pure), the monitor that reads every
//! group through the cluster client and keeps Burrow's windows, and the consumer protocol's
//! assignment format. Shared by metrics-emitter (`/lag`, gauges) and `trib lag`.

pub mod assignment;
pub mod monitor;
pub mod rules;

pub use monitor::{GroupLag, LagMonitor, LagReport, PartitionLag, Settings};
pub use rules::Status;
