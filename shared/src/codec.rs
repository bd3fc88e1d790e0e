//! The protobuf codec every generated service and client uses: prost with
//! smaller per-call buffers than tonic's default.
//!
//! Tonic allocates its encode and decode buffers eagerly, 8 KiB each, for
//! every call, and they live as long as the call. A control plane holding
//! 10,000 mesh streams would spend 160 MiB on buffers that are almost always
//! empty. Starting at 1 KiB, they grow in 1 KiB steps to fit a larger
//! message (one reservation per message, not one per step).
//!
//! A message that does not decode (a string field that is not UTF-8, a
//! truncated field) is refused as `INVALID_ARGUMENT` with the reason
//! `REQUEST_MALFORMED`, where prost alone would answer `INTERNAL`.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::refusal::{Reason, status};

/// Initial size and growth step of a call's buffers.
const BUFFER_BYTES: usize = 1024;
/// Encoded bytes after which a streaming encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// Prost encoding with [`BUFFER_BYTES`] buffers (named by the generated code).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::raw_decoder(settings()))
    }
}

/// Prost decoding whose failures are typed refusals.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            // prost's message names the field and the fault, never the data.
            status(
                Reason::RequestMalformed,
                format!(
                    "the message is not valid protobuf for this method: {}",
                    s.message()
                ),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
