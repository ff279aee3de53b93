//! The handshake: HELLO (client → server), WELCOME (server → client).
//!
//! ```text
//! HELLO    version: u16 | name: string | auth: u8
//!          auth 0: nothing follows
//!          auth 1: user: string | password: string
//!          auth 2: token: string
//! WELCOME  version: u16 | server_id: string | server_version: string
//!          | connection_id: u64 | max_frame_size: u32
//! ```

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::Body;
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

/// The first frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// A free-form name for logs and server info, e.g. `"orders-service"`.
    pub name: ByteString,
    /// How the client proves who it is, if the server asks.
    pub credentials: Option<Credentials>,
}

/// Client credentials carried in [`Hello`].
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Password {
        user: ByteString,
        password: ByteString,
    },
    Token(ByteString),
}

// Secrets stay out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Token(_) => f.write_str("Token(..)"),
        }
    }
}

const AUTH_NONE: u8 = 0;
const AUTH_PASSWORD: u8 = 1;
const AUTH_TOKEN: u8 = 2;

impl Body for Hello {
    const TYPE: FrameType = FrameType::Hello;

    fn body_len(&self) -> usize {
        2 + wire::string_len(&self.name)
            + 1
            + match &self.credentials {
                None => 0,
                Some(Credentials::Password { user, password }) => {
                    wire::string_len(user) + wire::string_len(password)
                }
                Some(Credentials::Token(t)) => wire::string_len(t),
            }
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u16(self.version);
        wire::put_string(dst, &self.name, "name")?;
        match &self.credentials {
            None => dst.put_u8(AUTH_NONE),
            Some(Credentials::Password { user, password }) => {
                dst.put_u8(AUTH_PASSWORD);
                wire::put_string(dst, user, "user")?;
                wire::put_string(dst, password, "password")?;
            }
            Some(Credentials::Token(token)) => {
                dst.put_u8(AUTH_TOKEN);
                wire::put_string(dst, token, "token")?;
            }
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let version = r.u16("version")?;
        let name = r.string("name")?;
        let credentials = match r.u8("auth")? {
            AUTH_NONE => None,
            AUTH_PASSWORD => Some(Credentials::Password {
                user: r.string("user")?,
                password: r.string("password")?,
            }),
            AUTH_TOKEN => Some(Credentials::Token(r.string("token")?)),
            other => return Err(r.invalid("auth", u64::from(other))),
        };
        Ok(Self {
            version,
            name,
            credentials,
        })
    }
}

/// The server's answer to a successful [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides will speak.
    pub version: u16,
    /// A stable identifier of this server instance.
    pub server_id: ByteString,
    /// The server software version, e.g. `"0.1.0"`.
    pub server_version: ByteString,
    /// The server's number for this connection, unique while the server runs.
    pub connection_id: u64,
    /// The largest frame (length field value) the server accepts.
    pub max_frame_size: u32,
}

impl Body for Welcome {
    const TYPE: FrameType = FrameType::Welcome;

    fn body_len(&self) -> usize {
        2 + wire::string_len(&self.server_id) + wire::string_len(&self.server_version) + 8 + 4
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u16(self.version);
        wire::put_string(dst, &self.server_id, "server_id")?;
        wire::put_string(dst, &self.server_version, "server_version")?;
        dst.put_u64(self.connection_id);
        dst.put_u32(self.max_frame_size);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            version: r.u16("version")?,
            server_id: r.string("server_id")?,
            server_version: r.string("server_version")?,
            connection_id: r.u64("connection_id")?,
            max_frame_size: r.u32("max_frame_size")?,
        })
    }
}
