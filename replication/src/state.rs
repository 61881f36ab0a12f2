//! What a node persists per replicated space (`lsm`'s `meta` key `0x06`):
//! the cluster-wide uid and name it is a copy of, the epoch it promised and
//! the process that promise names, and its epoch history. Written (synced)
//! by the adapter whenever the replica core returns [`Persist::Promise`] or
//! a batch starts new epochs, before the answer is sent.
//!
//! Encoding, little-endian: `version u8 (1) | uid u64 | name_len u16 | name |
//! promised u64 | has_promised_to u8 | [node_len u16 | node | incarnation
//! u64] | entries u32 | (epoch u64, start_seq u64) × entries`. Decoding a
//! damaged value is an error naming what is wrong, never a panic.
//!
//! [`Persist::Promise`]: crate::protocol::Persist::Promise

use crate::CodecError;
use crate::protocol::{EpochStart, History, Incarnation};

const VERSION: u8 = 1;
/// Longest name stored (space names and node ids are far shorter).
const MAX_NAME: usize = 1024;
/// Most history entries stored (one per epoch that wrote to the space).
pub const MAX_HISTORY: usize = 1 << 20;

/// A replicated space's durable protocol state on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceReplicaState {
    /// Cluster-wide uid (from the metadata group).
    pub uid: u64,
    /// Space name.
    pub name: String,
    /// Highest epoch promised.
    pub promised: u64,
    /// The process the promise is for.
    pub promised_to: Option<Incarnation>,
    /// Which epoch wrote which records here.
    pub history: History,
}

fn put_name(out: &mut Vec<u8>, s: &str) -> Result<(), CodecError> {
    let len = u16::try_from(s.len())
        .ok()
        .filter(|l| usize::from(*l) <= MAX_NAME)
        .ok_or(CodecError::TooLarge {
            what: "name",
            len: s.len() as u64,
            limit: MAX_NAME as u64,
        })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(CodecError::Truncated { what, at: self.at })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn name(&mut self, what: &'static str) -> Result<String, CodecError> {
        let len = usize::from(self.u16(what)?);
        if len > MAX_NAME {
            return Err(CodecError::TooLarge {
                what,
                len: len as u64,
                limit: MAX_NAME as u64,
            });
        }
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| CodecError::Malformed(format!("{what} is not UTF-8")))
    }
}

impl SpaceReplicaState {
    /// The stored form.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let entries = self.history.entries();
        if entries.len() > MAX_HISTORY {
            return Err(CodecError::TooMany {
                what: "history entries",
                count: entries.len() as u64,
                limit: MAX_HISTORY as u64,
            });
        }
        let mut out = Vec::with_capacity(64 + self.name.len() + entries.len() * 16);
        out.push(VERSION);
        out.extend_from_slice(&self.uid.to_le_bytes());
        put_name(&mut out, &self.name)?;
        out.extend_from_slice(&self.promised.to_le_bytes());
        match &self.promised_to {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                put_name(&mut out, &p.node)?;
                out.extend_from_slice(&p.incarnation.to_le_bytes());
            }
        }
        // Bounded by MAX_HISTORY above.
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.start_seq.to_le_bytes());
        }
        Ok(out)
    }

    /// Reads the stored form back.
    pub fn decode(bytes: &[u8]) -> Result<SpaceReplicaState, CodecError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(CodecError::Malformed(format!(
                "replication state version {version}, this build reads {VERSION}"
            )));
        }
        let uid = r.u64("uid")?;
        let name = r.name("space name")?;
        let promised = r.u64("promise")?;
        let promised_to = match r.u8("promise target flag")? {
            0 => None,
            1 => {
                let node = r.name("promised node")?;
                let incarnation = r.u64("promised incarnation")?;
                Some(Incarnation { node, incarnation })
            }
            other => {
                return Err(CodecError::Malformed(format!(
                    "promise target flag {other}"
                )));
            }
        };
        let count = r.u32("history length")? as usize;
        if count > MAX_HISTORY {
            return Err(CodecError::TooMany {
                what: "history entries",
                count: count as u64,
                limit: MAX_HISTORY as u64,
            });
        }
        // Each entry takes 16 bytes: a count beyond what is left is cut.
        if count.saturating_mul(16) > bytes.len().saturating_sub(r.at) {
            return Err(CodecError::Truncated {
                what: "history",
                at: r.at,
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let epoch = r.u64("history epoch")?;
            let start_seq = r.u64("history start")?;
            entries.push(EpochStart { epoch, start_seq });
        }
        if r.at != bytes.len() {
            return Err(CodecError::TrailingBytes(
                bytes.len() - r.at,
                "history entry",
            ));
        }
        let history = History::new(entries)
            .ok_or_else(|| CodecError::Malformed("history epochs or starts out of order".into()))?;
        Ok(SpaceReplicaState {
            uid,
            name,
            promised,
            promised_to,
            history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(entries: &[(u64, u64)], to: Option<(&str, u64)>) -> SpaceReplicaState {
        SpaceReplicaState {
            uid: 42,
            name: "agent-7".into(),
            promised: entries.last().map_or(0, |e| e.0),
            promised_to: to.map(|(n, i)| Incarnation {
                node: n.into(),
                incarnation: i,
            }),
            history: History::new(
                entries
                    .iter()
                    .map(|&(epoch, start_seq)| EpochStart { epoch, start_seq })
                    .collect(),
            )
            .expect("history"),
        }
    }

    #[test]
    fn states_round_trip_and_damage_is_an_error() {
        for s in [
            state(&[], None),
            state(&[(1, 1), (3, 10), (4, 10)], Some(("engram-1", 99))),
        ] {
            let bytes = s.encode().expect("encode");
            assert_eq!(SpaceReplicaState::decode(&bytes), Ok(s.clone()));
            // Every truncation and a trailing byte are refused.
            for cut in 0..bytes.len() {
                assert!(
                    SpaceReplicaState::decode(&bytes[..cut]).is_err(),
                    "cut {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(SpaceReplicaState::decode(&long).is_err());
        }
        let mut bad_version = state(&[], None).encode().expect("encode");
        bad_version[0] = 9;
        assert!(matches!(
            SpaceReplicaState::decode(&bad_version),
            Err(CodecError::Malformed(m)) if m.contains("version 9")
        ));
        // A history out of order is refused, not adopted.
        let mut s = state(&[(1, 1), (2, 5)], None).encode().expect("encode");
        let n = s.len();
        s[n - 16..n - 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(SpaceReplicaState::decode(&s).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SpaceReplicaState::decode(&bytes);
        }

        #[test]
        fn any_valid_state_round_trips(
            uid in any::<u64>(),
            steps in proptest::collection::vec((1u64..5, 0u64..5), 0..20),
            incarnation in proptest::option::of(any::<u64>()),
        ) {
            let mut entries = Vec::new();
            let (mut epoch, mut start) = (0u64, 1u64);
            for (de, ds) in steps {
                epoch += de;
                start += ds;
                entries.push(EpochStart { epoch, start_seq: start });
            }
            let s = SpaceReplicaState {
                uid,
                name: "s".into(),
                promised: epoch,
                promised_to: incarnation.map(|i| Incarnation { node: "n".into(), incarnation: i }),
                history: History::new(entries).expect("valid"),
            };
            let bytes = s.encode().expect("encode");
            prop_assert_eq!(SpaceReplicaState::decode(&bytes), Ok(s));
        }
    }
}
