//! The handshake: the first frame must be a HELLO in a version this server speaks.

use tern_codec::{ErrorCode, Frame, Hello, Welcome, PROTOCOL_VERSION};

use super::Reject;
use crate::shared::Shared;

/// Checks the first frame of a connection and builds the WELCOME.
///
/// # Errors
///
/// Not a HELLO, or a protocol version this server does not speak.
pub(crate) fn accept(
    shared: &Shared,
    connection_id: u64,
    first: Frame,
) -> Result<(Hello, Welcome), Reject> {
    let hello = match first {
        Frame::Hello(h) => h,
        other => {
            return Err(Reject::new(
                ErrorCode::UnexpectedFrame,
                format!(
                    "expected HELLO as the first frame, got {}",
                    other.frame_type()
                ),
            ))
        }
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(Reject::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        server_id: shared.server_id.as_str().into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        connection_id,
        max_frame_size: shared.config.limits.max_frame_size,
    };
    Ok((hello, welcome))
}
