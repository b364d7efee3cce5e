//! `lbtrace watch`: the tripwire. The flight recorder (`recorder`) turns events into correlated
//! connections and findings, `alerts` turns findings into alerts and recoveries, `run` is the
//! main loop, `socket` / `history` serve `lbtrace dump`, `metrics` serves Prometheus,
//! `probes` runs the background probes of the backends, `replies` judges the backends' replies
//! on the wire (`--data`).
pub mod alerts;
pub mod history;
pub mod metrics;
pub mod on_alert;
pub mod probes;
pub mod recorder;
pub mod replies;
pub mod run;
pub mod socket;

#[cfg(test)]
mod parity;
#[cfg(test)]
mod tests;
