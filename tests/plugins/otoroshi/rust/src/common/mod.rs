//! Code shared by the Otoroshi test plugins of this crate (the library is one
//! module, each example another; they include this folder with `#[path]`).
#![allow(dead_code)]

pub mod kit;
pub mod otoroshi;
pub mod steps;
pub mod types;
