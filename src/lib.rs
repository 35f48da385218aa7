//! attachment-gateway: a gRPC `AttachmentService` in front of the CorrigoPro Direct
//! API's attachments endpoints.
//!
//! One request goes down a straight path: [`server`] (listeners, layers, health,
//! shutdown) -> [`middleware`] (spans, message limits, auth, rate limits) ->
//! [`api`] (proto <-> domain, the one error table) -> [`upstream`] (the REST
//! client), with [`auth`], [`limits`] and [`store`] beside it and [`domain`],
//! [`proto`] and a few leaves below. No module imports one above it; the README's
//! Architecture section says what may import what. [`sandbox`] is an embedded
//! emulator of the upstream.

//!
//! With `default-features = false, features = ["client"]`, only [`proto`] (the
//! generated messages and client) and [`client`] (a typed convenience client) are
//! built, without any of the server's dependencies.

#[cfg(feature = "client")]
pub mod client;
pub mod proto;

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
pub mod listener;
#[cfg(feature = "server")]
pub mod methods;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod middleware;
#[cfg(feature = "server")]
pub mod periodic;
#[cfg(feature = "server")]
pub mod recorder;
#[cfg(feature = "server")]
pub mod sandbox;
#[cfg(feature = "server")]
pub mod scopes;
#[cfg(feature = "server")]
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod upstream;
#[cfg(feature = "server")]
pub mod webhooks;
