//! `lbtrace watch`: the tripwire.
pub mod alerts;
pub mod recorder;

#[cfg(test)]
mod tests;
