//! RocketMQ's remoting protocol (the TCP protocol of 4.x clients, name servers and brokers):
//! the frame codec, request and response codes, typed access to request headers, and
//! connections on which either side may send requests.

pub mod auth;
pub mod body;
pub mod broker;
pub mod codec;
pub mod codes;
pub mod conn;
pub mod fields;

pub use codec::{FrameError, RemotingCommand, SerializeType};
pub use conn::{Connection, Handler, Pool, RemotingError};
pub use fields::{FieldError, Fields};
