//! The generated `corrigopro.attachments.v1` messages, client and server.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("corrigopro.attachments.v1");

/// The encoded descriptor set of the proto, served by reflection.
#[cfg(feature = "server")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("attachments_descriptor");

#[cfg(feature = "server")]
pub mod codec;
#[cfg(feature = "server")]
pub mod deep;
pub mod error_info;
#[cfg(feature = "server")]
pub mod frames;
#[cfg(feature = "server")]
pub mod raw_event;
#[cfg(feature = "server")]
pub mod struct_wire;

/// The same messages and service as the gateway's server handles them: identical
/// on the wire, but `google.protobuf.Struct` fields (`Attachment.upstream`) hold
/// bytes already encoded ([`struct_wire::RawStruct`]). Callers
/// use the messages above.
#[cfg(feature = "server")]
pub mod wire {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]

    include!(concat!(
        env!("OUT_DIR"),
        "/wire/corrigopro.attachments.v1.rs"
    ));
}
