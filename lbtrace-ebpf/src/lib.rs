#![no_std]
// This file exists to enable the library target (aya-build and cargo metadata expect one).
