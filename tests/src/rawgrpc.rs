//! Raw gRPC calls: the request message given as bytes, so a test can send
//! what no generated client would (an oversized message, a string field
//! that is not UTF-8), over a real HTTP/2 channel.

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Calls `path` (`/package.Service/Method`) with `message`, adding the
/// agent header when `agent` is set.
pub async fn unary(
    ch: Channel,
    path: &'static str,
    message: Vec<u8>,
    agent: bool,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = Request::new(message);
    if agent {
        req.metadata_mut().insert(
            warden_shared::AGENT_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A message whose field `field` is a length-delimited value of `bytes`
/// (a string field that holds them, valid UTF-8 or not).
pub fn with_field(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut m = vec![field << 3 | 2];
    prost::encoding::encode_varint(bytes.len() as u64, &mut m);
    m.extend_from_slice(bytes);
    m
}
