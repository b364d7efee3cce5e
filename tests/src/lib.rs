#[cfg(test)]
mod prog_test_run;
