//! Wire protocols: types and codecs only, no business state (that is `service`).

pub mod grpc;
pub mod http;
pub mod http_auth;
pub mod remoting;
