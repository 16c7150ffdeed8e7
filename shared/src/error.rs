//! Errors of the shared clients that a process start-up or an operator sees.
//!
//! The wire-level failure of one message is a
//! [`HandlerError`](crate::runtime::HandlerError); this is the other kind:
//! a service the process needs could not be reached or used. It names the
//! service, the (redacted) address and how to fix it, so `main` can print it
//! as it is.

/// A service the fleet depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    RabbitMq,
    PostgreSql,
    Redis,
    Search,
    /// The RabbitMQ management API.
    Management,
    /// The worker's own `/metrics` listener.
    Metrics,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::RabbitMq => "RabbitMQ",
            Service::PostgreSql => "PostgreSQL",
            Service::Redis => "Redis",
            Service::Search => "the search cluster",
            Service::Management => "the RabbitMQ management API",
            Service::Metrics => "the metrics listener",
        })
    }
}

/// A service could not be reached or used; the message is meant for people
/// (it carries the address without its password and a hint that fits).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub service: Service,
    message: String,
}

impl ServiceError {
    pub fn new(service: Service, message: impl Into<String>) -> Self {
        Self {
            service,
            message: message.into(),
        }
    }
}
