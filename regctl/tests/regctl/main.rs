//! regctl as a user runs it, one module per subject, in one test binary: one
//! link of tonic, hyper and the node instead of one per file.
//! `cargo test -p regctl --test regctl -- tls::` runs one module.

mod auth;
mod regctl;
mod tls;
