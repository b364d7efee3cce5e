//! `lbtrace check`: the 4-step checklist, once.
pub mod verdict;
