//! What every Corriente crate stands on, below both the media plumbing and the cluster:
//!
//! - the names and descriptions of streams: [`StreamKey`] (validated `APP/NAME`) and
//!   [`MediaInfo`] (codecs, size, rates, as stats and the registry show them);
//! - the infrastructure of a node's listeners, which knows nothing of media: the accept loop
//!   ([`net`]), per-client limits ([`limits`]), reloading TLS certificates ([`tls`]), signed
//!   tokens and CIDR rules ([`access`]) and credentials in files ([`secret`]);
//! - small shared arithmetic: UTC calendar dates ([`time`]) and stable digests ([`digest`]).

pub mod access;
pub mod digest;
pub mod info;
pub mod key;
pub mod limits;
pub mod net;
pub mod secret;
pub mod time;
pub mod tls;

pub use info::MediaInfo;
pub use key::StreamKey;
