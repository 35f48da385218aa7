//! Compiles the proto contract in pure Rust (protox: no system `protoc`), keeps the
//! encoded descriptor set for server reflection, and generates the tonic code from it.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO: &str = "proto/corrigopro/attachments/v1/attachments.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile([PROTO], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("attachments_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // File bytes stay `bytes::Bytes` end to end: no copy into a Vec per chunk.
        .bytes(".corrigopro.attachments.v1")
        .compile_fds(fds.clone())?;

    // The gateway's own server side: the same messages, identical on the wire, but
    // `google.protobuf.Struct` is carried as bytes already encoded (the list
    // answer's JSON is written straight into them); see `proto::struct_wire`.
    let wire = out_dir.join("wire");
    fs::create_dir_all(&wire)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .bytes(".corrigopro.attachments.v1")
        .extern_path(
            ".google.protobuf.Struct",
            "crate::proto::struct_wire::RawStruct",
        )
        // Events go out as the log recorded them; see `proto::raw_event`.
        .extern_path(
            ".corrigopro.attachments.v1.AttachmentEvent",
            "crate::proto::raw_event::RawEvent",
        )
        // Small first buffers: an idle watch should not hold 8 KiB; see `proto::codec`.
        .codec_path("crate::proto::codec::SmallBuffers")
        .out_dir(&wire)
        .compile_fds(fds)?;
    Ok(())
}
