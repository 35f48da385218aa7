//! The generated `corrigopro.attachments.v1` messages, client and server.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("corrigopro.attachments.v1");

/// The encoded descriptor set of the proto, served by reflection.
#[cfg(feature = "server")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("attachments_descriptor");
