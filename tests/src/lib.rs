#[cfg(test)]
mod prog_test_run;

pub mod frames;
pub mod lab;
pub mod packet;
pub mod runner;
pub mod tcpdump;
#[cfg(test)]
mod tests;
