//! The gossip wire format: foca's postcard encoding of headers and member
//! updates, with every decoded identity checked (names within their limits,
//! allowed characters), so a malformed or hostile datagram is an error and
//! never a member. foca itself bounds the datagram (`max_packet_bytes`) and
//! postcard bounds every length by the bytes actually present.

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, PostcardCodec};

use crate::identity::NodeIdentity;

/// Why a datagram was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not postcard, truncated, or an unknown message kind.
    #[error("malformed gossip payload: {0}")]
    Malformed(#[from] postcard::Error),
    /// Well-formed but carrying an identity outside the limits.
    #[error("gossip payload carries an invalid member identity")]
    InvalidIdentity,
}

/// foca [`Codec`] for [`NodeIdentity`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GossipCodec;

fn check(id: &NodeIdentity) -> Result<(), DecodeError> {
    if id.is_valid() {
        Ok(())
    } else {
        Err(DecodeError::InvalidIdentity)
    }
}

impl Codec<NodeIdentity> for GossipCodec {
    type Error = DecodeError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), DecodeError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeIdentity>, DecodeError> {
        let header = PostcardCodec.decode_header(buf)?;
        check(&header.src)?;
        check(&header.dst)?;
        if header.src.node_id.is_empty() {
            // Only a destination may be a seed placeholder.
            return Err(DecodeError::InvalidIdentity);
        }
        match &header.message {
            Message::PingReq { target: id, .. }
            | Message::IndirectPing { origin: id, .. }
            | Message::IndirectAck { target: id, .. }
            | Message::ForwardedAck { origin: id, .. } => check(id)?,
            _ => {}
        }
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), DecodeError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, DecodeError> {
        let member: Member<NodeIdentity> = PostcardCodec.decode_member(buf)?;
        check(member.id())?;
        if member.id().node_id.is_empty() {
            return Err(DecodeError::InvalidIdentity);
        }
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::State;

    fn id(name: &str) -> NodeIdentity {
        let a = "10.0.0.1:7946".parse().expect("addr");
        NodeIdentity {
            node_id: name.into(),
            gossip: a,
            http: a,
            grpc: a,
            peer: a,
            rack: "r1".into(),
            zone: "z1".into(),
            generation: 7,
        }
    }

    #[test]
    fn headers_and_members_round_trip() {
        let h = Header {
            src: id("engram-0"),
            src_incarnation: 3,
            dst: id("engram-1"),
            message: Message::PingReq {
                target: id("engram-2"),
                probe_number: 9,
            },
        };
        let mut buf = Vec::new();
        GossipCodec.encode_header(&h, &mut buf).expect("encodes");
        assert_eq!(GossipCodec.decode_header(&buf[..]).expect("decodes"), h);
        let m = Member::new(id("engram-3"), 2, State::Suspect);
        let mut buf = Vec::new();
        GossipCodec.encode_member(&m, &mut buf).expect("encodes");
        assert_eq!(GossipCodec.decode_member(&buf[..]).expect("decodes"), m);
    }

    #[test]
    fn invalid_identities_and_garbage_are_rejected() {
        let mut bad = id("engram-0");
        bad.node_id = "Not Valid".into();
        let m = Member::new(bad, 0, State::Alive);
        let mut buf = Vec::new();
        GossipCodec.encode_member(&m, &mut buf).expect("encodes");
        assert!(matches!(
            GossipCodec.decode_member(&buf[..]),
            Err(DecodeError::InvalidIdentity)
        ));
        let seed = Member::new(
            NodeIdentity::seed("10.0.0.9:7946".parse().expect("a")),
            0,
            State::Alive,
        );
        let mut buf = Vec::new();
        GossipCodec.encode_member(&seed, &mut buf).expect("encodes");
        assert!(GossipCodec.decode_member(&buf[..]).is_err());
        for garbage in [&[][..], &[0xff; 3][..], &[1, 2, 3, 4, 5, 6, 7, 8][..]] {
            assert!(GossipCodec.decode_header(garbage).is_err());
        }
    }
}
