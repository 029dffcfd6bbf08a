//! Watches: the sans-IO [`WatchHub`](hub::WatchHub) that matches applied
//! changes to watchers, and the shell that drives it on a member (the
//! shared machine, the history driver thread, the per-watcher channels).

mod driver;
mod hub;
mod index;
mod stream;

pub(crate) use driver::{Driver, DriverConfig, HubObserver, SharedMachine, wake_channel, wake_of};
pub(crate) use hub::{Delivery, HubConfig, Offer, WatchHub, WatchSink};
pub(crate) use stream::open;
