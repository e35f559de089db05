//! BatchAuthorizeRequest as the server decodes it. Decoded by prost, a batch of 100 checks is
//! 400 separately allocated strings, which cost about as much as deciding the checks. Here a
//! check in the usual shape (the four string fields, each at most once, nothing else) is kept
//! as four spans of one shared buffer; anything else (a check's own consistency, unknown or
//! repeated fields, a check split across buffer chunks) is decoded by prost, so the accepted
//! and rejected encodings are exactly prost's.

use std::ops::Range;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::pb;

/// Field numbers of `roster.v1.AuthorizeRequest` and `roster.v1.BatchAuthorizeRequest`.
const USER_ID: u32 = 1;
const ORGANIZATION_ID: u32 = 2;
const WORKSPACE_ID: u32 = 3;
const PERMISSION: u32 = 4;
const CHECKS: u32 = 1;
const CONSISTENCY: u32 = 2;

/// `roster.v1.BatchAuthorizeRequest`, decoded for the server.
#[derive(Debug, Default)]
pub struct BatchChecks {
    /// Every plain check's encoding, back to back; its strings are spans of it.
    text: String,
    checks: Vec<Entry>,
    /// The batch's consistency requirement.
    pub consistency: Option<pb::Consistency>,
}

#[derive(Debug)]
enum Entry {
    /// Where user_id, organization_id, workspace_id and permission are in `text`.
    Plain([Range<u32>; 4]),
    /// A check in any other shape.
    Decoded(pb::AuthorizeRequest),
}

/// The fields of one check, borrowed from the request that holds it.
#[derive(Debug, Clone, Copy)]
pub struct CheckFields<'a> {
    pub user_id: &'a str,
    pub organization_id: &'a str,
    pub workspace_id: &'a str,
    pub permission: &'a str,
    /// `consistency`; inside a batch it is validated, and the batch's own applies.
    pub consistency: Option<&'a pb::Consistency>,
}

impl<'a> From<&'a pb::AuthorizeRequest> for CheckFields<'a> {
    fn from(req: &'a pb::AuthorizeRequest) -> Self {
        CheckFields {
            user_id: &req.user_id,
            organization_id: &req.organization_id,
            workspace_id: &req.workspace_id,
            permission: &req.permission,
            consistency: req.consistency.as_ref(),
        }
    }
}

impl BatchChecks {
    /// Checks in the batch.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether the batch holds no check.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The checks, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = CheckFields<'_>> {
        self.checks.iter().map(|entry| match entry {
            Entry::Plain([user, org, workspace, permission]) => CheckFields {
                user_id: self.span(user),
                organization_id: self.span(org),
                workspace_id: self.span(workspace),
                permission: self.span(permission),
                consistency: None,
            },
            Entry::Decoded(req) => CheckFields::from(req),
        })
    }

    fn span(&self, range: &Range<u32>) -> &str {
        // Spans lie on character boundaries (see `read_plain`), so slicing cannot fail.
        self.text.get(range.start as usize..range.end as usize).unwrap_or_default()
    }

    /// Reads a length-delimited check in the plain shape from the start of `bytes` into `text`.
    /// Returns the bytes it took, or `None` (with `text` as it was) for any other shape.
    fn read_plain(&mut self, mut bytes: &[u8]) -> Option<(usize, [Range<u32>; 4])> {
        let available = bytes.len();
        let len = usize::try_from(encoding::decode_varint(&mut bytes).ok()?).ok()?;
        let body = bytes.get(..len)?;
        let taken = available - bytes.len() + len;
        // The whole check is taken as text at once. Every key is one ASCII byte (below) and a
        // length ends in one, so when the whole is valid UTF-8 so is every string in it.
        let body = std::str::from_utf8(body).ok()?;
        let base = self.text.len();
        let mut spans: [Option<Range<u32>>; 4] = Default::default();
        let mut rest = body.as_bytes();
        while let Some((&key, after_key)) = rest.split_first() {
            // A one-byte key of a length-delimited field numbered 1 to 4.
            let tag = usize::from(key >> 3);
            if key & 0x87 != WireType::LengthDelimited as u8 || !(1..=4).contains(&tag) {
                return None;
            }
            rest = after_key;
            let len = usize::try_from(encoding::decode_varint(&mut rest).ok()?).ok()?;
            if len > rest.len() {
                return None;
            }
            let start = base + (body.len() - rest.len());
            rest = &rest[len..];
            let slot = &mut spans[tag - 1];
            // A field seen twice is left to prost (the last one wins).
            if slot.is_some() {
                return None;
            }
            *slot = Some(u32::try_from(start).ok()?..u32::try_from(start + len).ok()?);
        }
        // An absent field is the empty string.
        let empty = u32::try_from(base).ok()?;
        self.text.push_str(body);
        Some((taken, spans.map(|span| span.unwrap_or(empty..empty))))
    }

    fn plain_len(&self, spans: &[Range<u32>; 4]) -> usize {
        spans
            .iter()
            .map(|span| (span.end - span.start) as usize)
            .filter(|len| *len > 0)
            .map(|len| 1 + encoding::encoded_len_varint(len as u64) + len)
            .sum()
    }
}

impl Message for BatchChecks {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for entry in &self.checks {
            match entry {
                Entry::Plain(spans) => {
                    encoding::encode_key(CHECKS, WireType::LengthDelimited, buf);
                    encoding::encode_varint(self.plain_len(spans) as u64, buf);
                    for (tag, span) in
                        [USER_ID, ORGANIZATION_ID, WORKSPACE_ID, PERMISSION].into_iter().zip(spans)
                    {
                        let value = self.span(span);
                        if !value.is_empty() {
                            encoding::encode_key(tag, WireType::LengthDelimited, buf);
                            encoding::encode_varint(value.len() as u64, buf);
                            buf.put_slice(value.as_bytes());
                        }
                    }
                }
                Entry::Decoded(req) => encoding::message::encode(CHECKS, req, buf),
            }
        }
        if let Some(consistency) = &self.consistency {
            encoding::message::encode(CONSISTENCY, consistency, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            CHECKS => {
                if wire_type == WireType::LengthDelimited
                    && let Some((taken, spans)) = self.read_plain(buf.chunk())
                {
                    buf.advance(taken);
                    self.checks.push(Entry::Plain(spans));
                    return Ok(());
                }
                let mut req = pb::AuthorizeRequest::default();
                encoding::message::merge(wire_type, &mut req, buf, ctx)?;
                self.checks.push(Entry::Decoded(req));
                Ok(())
            }
            CONSISTENCY => encoding::message::merge(
                wire_type,
                self.consistency.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let checks: usize = self
            .checks
            .iter()
            .map(|entry| match entry {
                Entry::Plain(spans) => {
                    let len = self.plain_len(spans);
                    encoding::key_len(CHECKS) + encoding::encoded_len_varint(len as u64) + len
                }
                Entry::Decoded(req) => encoding::message::encoded_len(CHECKS, req),
            })
            .sum();
        checks
            + self
                .consistency
                .as_ref()
                .map_or(0, |c| encoding::message::encoded_len(CONSISTENCY, c))
    }

    fn clear(&mut self) {
        self.text.clear();
        self.checks.clear();
        self.consistency = None;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::bytes::Buf as _;

    use super::*;

    fn key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
        encoding::encode_key(tag, wire_type, out);
    }

    fn field(tag: u32, value: &[u8], out: &mut Vec<u8>) {
        key(tag, WireType::LengthDelimited, out);
        encoding::encode_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    /// One field of a check's encoding: mostly the four strings, sometimes anything else a
    /// client could send.
    fn check_field() -> impl Strategy<Value = Vec<u8>> {
        let text = prop_oneof![
            4 => "[a-z0-9-]{0,40}".prop_map(String::into_bytes),
            1 => "\\PC{0,8}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..6),
        ];
        prop_oneof![
            12 => (1..=4u32, text).prop_map(|(tag, value)| {
                let mut out = Vec::new();
                field(tag, &value, &mut out);
                out
            }),
            1 => (0..3i32, "[a-z0-9]{0,6}").prop_map(|(requirement, token)| {
                let mut out = Vec::new();
                let consistency = pb::Consistency { requirement, at_least_as_fresh: token };
                encoding::message::encode(5, &consistency, &mut out);
                out
            }),
            1 => (5..40u32, any::<u64>()).prop_map(|(tag, value)| {
                let mut out = Vec::new();
                key(tag, WireType::Varint, &mut out);
                encoding::encode_varint(value, &mut out);
                out
            }),
            // A known field with the wrong wire type; small values, which would also read as
            // a plausible length.
            1 => (1..=4u32, 0..4u32).prop_map(|(tag, value)| {
                let mut out = Vec::new();
                key(tag, WireType::ThirtyTwoBit, &mut out);
                out.extend_from_slice(&value.to_le_bytes());
                out
            }),
        ]
    }

    /// A BatchAuthorizeRequest's encoding, field by field, then damaged or not.
    fn batch() -> impl Strategy<Value = Vec<u8>> {
        let check = proptest::collection::vec(check_field(), 0..7).prop_map(|fields| {
            let mut out = Vec::new();
            field(CHECKS, &fields.concat(), &mut out);
            out
        });
        let consistency = (0..3i32).prop_map(|requirement| {
            let mut out = Vec::new();
            let consistency = pb::Consistency { requirement, at_least_as_fresh: String::new() };
            encoding::message::encode(CONSISTENCY, &consistency, &mut out);
            out
        });
        let top = prop_oneof![8 => check, 1 => consistency];
        (proptest::collection::vec(top, 0..12), any::<Option<(prop::sample::Index, u8)>>())
            .prop_map(|(parts, damage)| {
                let mut bytes = parts.concat();
                if let Some((at, value)) = damage
                    && !bytes.is_empty()
                {
                    let at = at.index(bytes.len());
                    if value % 2 == 0 { bytes.truncate(at) } else { bytes[at] = value }
                }
                bytes
            })
    }

    fn same_as_prost(
        bytes: &[u8],
        ours: Result<BatchChecks, DecodeError>,
    ) -> Result<(), TestCaseError> {
        let reference = pb::BatchAuthorizeRequest::decode(bytes);
        prop_assert_eq!(ours.is_ok(), reference.is_ok(), "decoding {:?}", bytes);
        let (Ok(ours), Ok(reference)) = (ours, reference) else { return Ok(()) };
        prop_assert_eq!(ours.len(), reference.checks.len());
        for (mine, theirs) in ours.iter().zip(&reference.checks) {
            let theirs = CheckFields::from(theirs);
            prop_assert_eq!(mine.user_id, theirs.user_id);
            prop_assert_eq!(mine.organization_id, theirs.organization_id);
            prop_assert_eq!(mine.workspace_id, theirs.workspace_id);
            prop_assert_eq!(mine.permission, theirs.permission);
            prop_assert_eq!(mine.consistency, theirs.consistency);
        }
        prop_assert_eq!(&ours.consistency, &reference.consistency);
        // Encoding it again gives the same request.
        let again = ours.encode_to_vec();
        prop_assert_eq!(again.len(), ours.encoded_len());
        prop_assert_eq!(pb::BatchAuthorizeRequest::decode(&again[..]).ok(), Some(reference));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the bytes, a batch reads exactly as prost reads it, or fails where prost
        /// fails.
        #[test]
        fn a_batch_decodes_as_prost_decodes_it(bytes in batch()) {
            same_as_prost(&bytes, BatchChecks::decode(&bytes[..]))?;
        }

        /// The same when the bytes arrive in two pieces, as they can from the network.
        #[test]
        fn a_batch_split_across_chunks_decodes_as_prost_decodes_it(
            bytes in batch(),
            at in any::<prop::sample::Index>(),
        ) {
            let (head, tail) = bytes.split_at(at.index(bytes.len() + 1));
            same_as_prost(&bytes, BatchChecks::decode(head.chain(tail)))?;
        }
    }

    #[test]
    fn plain_checks_share_one_buffer_and_others_are_decoded_whole() {
        let plain = pb::AuthorizeRequest {
            user_id: "user-1".into(),
            organization_id: "org".into(),
            workspace_id: String::new(),
            permission: "members.read".into(),
            consistency: None,
        };
        let with_consistency =
            pb::AuthorizeRequest { consistency: Some(pb::Consistency::default()), ..plain.clone() };
        let request = pb::BatchAuthorizeRequest {
            checks: vec![plain.clone(), with_consistency, plain.clone()],
            consistency: None,
        };
        let decoded = BatchChecks::decode(&request.encode_to_vec()[..]).unwrap();
        assert!(matches!(
            decoded.checks[..],
            [Entry::Plain(_), Entry::Decoded(_), Entry::Plain(_)]
        ));
        assert_eq!(decoded.text.len(), 2 * plain.encoded_len());
        assert_eq!(decoded.iter().nth(2).unwrap().permission, "members.read");
    }
}
