//! What an HTTP/2 client sends on an accepted connection, read through the `:authority`
//! repair (src/h2_authority.rs, issue 13) before h2 sees it. Properties: never a panic; the
//! result does not depend on how the bytes arrive (one at a time, or in reads of the first
//! byte's size, or all at once); bytes that cannot hold a HEADERS frame pass byte for byte.
#![no_main]

use goplugin::fuzzing::h2_authority_repair;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = h2_authority_repair(data, usize::MAX);
    let split = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in [1, split] {
        let again = h2_authority_repair(data, chunk);
        match (&whole, &again) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "chunk {chunk}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "chunk {chunk}"),
            _ => panic!("chunk {chunk}: {whole:?} vs {again:?}"),
        }
    }
    if let Ok(out) = &whole {
        // No byte 0x01, no HEADERS frame type: nothing to repair.
        if !data.contains(&0x1) {
            assert_eq!(out, data);
        }
    }
});
