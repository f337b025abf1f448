//! The `iosv.sys` image for the Linux check: nothing but iosv with feature `kernel`, whose
//! glue exports `DriverEntry`. Linked by `scripts/check-glue`.

#![no_std]

extern crate iosv;
