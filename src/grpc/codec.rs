//! The protobuf codec of Roster's services: prost, except that a request which does not decode
//! (invalid UTF-8 in a string, a truncated field) is the client's error, INVALID_ARGUMENT, rather
//! than the INTERNAL that the stock codec answers.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Codec used by the generated servers and clients of `roster.v1`.
#[derive(Debug)]
pub struct RosterCodec<T, U> {
    inner: ProstCodec<T, U>,
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RosterCodec<T, U> {
    fn default() -> Self {
        Self { inner: ProstCodec::default(), _types: PhantomData }
    }
}

impl<T, U> Codec for RosterCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RosterDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RosterDecoder(self.inner.decoder())
    }
}

/// Decodes with prost and reports malformed input as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct RosterDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RosterDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => super::status::refused(
                crate::error::ErrorReason::MalformedMessage,
                format!(
                    "the message is not a valid protobuf encoding of the expected type: {}",
                    status.message()
                ),
            ),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
