//! End-to-end tests: each builds its own lab (src/lab) and runs the lbtrace binary in it.
//! Root only; `cargo xtask test` runs them one at a time.

mod check;
mod check_slow;
mod coexist;
mod data_path;
mod hardening;
mod lab_smoke;
mod pressure;
mod resets;
mod trace;
mod watch;
mod watch_parity;
mod watch_pressure;
