//! Integration tests against the real services (one binary, so it links once).

mod common;
mod failures;
mod pipeline;
mod topology;
