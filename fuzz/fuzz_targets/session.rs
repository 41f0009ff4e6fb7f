//! The RTMP chunk stream and message path as a server runs it: bytes a client sends after the
//! handshake, in arbitrary reads, into `ServerSession` (chunk.rs, message.rs, session.rs, AMF0
//! commands), answered the way the origin's ingest or the edge's playback answers, and every
//! published frame through what the hub does with it.
//!
//! Input: one byte choosing the role (bit 7: edge) and the read sizes, then the client's bytes.
#![no_main]

use corriente_fuzz::{Role, drive_session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corriente_fuzz::bounded_memory(data.len(), || run(data));
});

fn run(data: &[u8]) {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let role = if seed & 0x80 == 0 {
        Role::Origin
    } else {
        Role::Edge
    };
    drive_session(role, seed, rest);
}
