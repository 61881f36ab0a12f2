//! The frame decoder never panics, and whatever it accepts re-encodes to the
//! exact bytes it came from (nothing is silently altered).
#![no_main]

use engram_wal::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max_payload in [0u32, 64, 1 << 20] {
        if let Ok(f) = frame::decode(data, max_payload) {
            assert!(f.payload.len() <= max_payload as usize);
            let again = frame::encode(f.lsn, f.header, f.payload);
            assert_eq!(&again[..], &data[..f.encoded_len()]);
        }
    }
    if let Some(at) = frame::find_valid_frame(data, 0, 4096) {
        assert!(matches!(
            frame::decode(&data[at..], 4096),
            Ok(_) | Err(frame::FrameError::Unsupported { .. })
        ));
    }
});
