//! Generates the tonic/prost code for the control and relay APIs.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        // Media payloads travel as `bytes::Bytes` end to end: decoding slices the receive
        // buffer instead of copying into a `Vec<u8>`.
        .bytes(".")
        .compile_protos(&["control.proto", "relay.proto"], &["."])?;
    println!("cargo:rerun-if-changed=control.proto");
    println!("cargo:rerun-if-changed=relay.proto");
    Ok(())
}
