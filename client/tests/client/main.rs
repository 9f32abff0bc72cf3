//! The client library against scripted nodes (`scripted`), one module per
//! subject, in one test binary: one link of tonic and hyper instead of one
//! per file. `cargo test -p registry-client --test client -- tls::` runs one
//! module.

mod abandoned_session;
mod auth;
mod scripted;
mod tls;
mod watch_move;
