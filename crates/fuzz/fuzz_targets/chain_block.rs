//! Chain blocks: decoding one, and verifying a chain cut from the input.
#![no_main]

use ghostkey_proto::chain::{verify_chain, Block};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = Block::decode(data) {
        // What decodes must encode back to the same bytes.
        assert_eq!(block.encode(), data);
    }
    // The first byte says where to cut the rest into blocks.
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = usize::from(cut).max(1);
    let blocks: Vec<Vec<u8>> = rest.chunks(cut.min(rest.len().max(1))).map(<[u8]>::to_vec).collect();
    let key = [0x58u8; 32];
    let _ = verify_chain(&blocks, &|_| Some(key));
});
