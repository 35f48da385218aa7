//! attachment-gateway: a gRPC `AttachmentService` in front of the CorrigoPro Direct
//! API's attachments endpoints.
//!
//! Layers, each knowing only the one below: [`server`] (tonic, health, reflection,
//! shutdown) -> [`api`] (proto <-> domain, the one error table) -> [`domain`]
//! (validated types, limits) -> [`upstream`] (the REST client: tokens, multipart,
//! error decoding). [`sandbox`] is an embedded emulator of the upstream.

pub mod api;
pub mod auth;
pub mod config;
pub mod domain;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod proto;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod upstream;
