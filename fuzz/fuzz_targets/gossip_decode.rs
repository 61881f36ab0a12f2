//! Any datagram from the network: the gossip decoder never panics, accepts
//! no identity outside the limits, re-encodes what it accepts to the same
//! value, and a SWIM member fed the bytes stays consistent.
#![no_main]

use engram_cluster::NodeIdentity;
use engram_cluster::codec::GossipCodec;
use foca::{AccumulatingRuntime, Codec, Config, Foca};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = GossipCodec.decode_header(data) {
        assert!(h.src.is_valid() && h.dst.is_valid() && !h.src.node_id.is_empty());
        let mut buf = Vec::new();
        GossipCodec.encode_header(&h, &mut buf).expect("re-encodes");
        assert_eq!(GossipCodec.decode_header(&buf[..]).expect("decodes again"), h);
    }
    if let Ok(m) = GossipCodec.decode_member(data) {
        assert!(m.id().is_valid() && !m.id().node_id.is_empty());
    }
    let addr = "10.0.0.1:7946".parse().expect("addr");
    let me = NodeIdentity {
        node_id: "fuzz-0".into(),
        gossip: addr,
        http: addr,
        grpc: addr,
        peer: addr,
        rack: String::new(),
        zone: String::new(),
        generation: 1,
    };
    let mut swim = Foca::new(me, Config::simple(), SmallRng::seed_from_u64(7), GossipCodec);
    let mut rt = AccumulatingRuntime::new();
    let _ = swim.handle_data(data, &mut rt);
    for m in swim.iter_membership_state() {
        assert!(m.id().is_valid() && !m.id().node_id.is_empty());
    }
});
