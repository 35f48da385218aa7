//! The server's codec: prost, with encode and decode buffers that start small.
//!
//! tonic allocates each call's encode buffer up front (8 KiB by default) and keeps
//! it for the call's life: for a long-lived `WatchAttachments` stream that is idle
//! nearly all the time, it was most of what a watch cost (~11.7 KiB per watch;
//! see BENCHMARKS.md). Buffers still grow as messages need (amortized doubling),
//! so a 256 KiB download chunk costs what it did.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first size of a call's encode and decode buffers.
const START: usize = 512;
/// Encoded bytes held back before they are handed to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(START, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(START, YIELD_THRESHOLD))
    }
}
