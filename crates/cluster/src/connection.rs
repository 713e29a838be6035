//! One connection to one broker: TCP or TLS, SASL authentication, API version negotiation
//! and size-prefixed request/response frames encoded by `kafka-protocol`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{ClusterConfig, Mechanism};
use crate::{Error, scram, tls};

/// The largest response accepted: a corrupt or hostile size prefix must not allocate
/// gigabytes.
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open, authenticated connection.
pub(crate) struct Connection {
    broker: String,
    stream: Box<dyn Stream>,
    client_id: StrBytes,
    correlation: i32,
    /// A call started and not finished: set before writing, cleared once its answer is read.
    in_flight: bool,
    /// The broker's supported range per API key.
    versions: HashMap<i16, (i16, i16)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("broker", &self.broker)
            .finish()
    }
}

impl Connection {
    /// Connects to `broker` (`host:port`), secures and authenticates the connection as
    /// `config` says, and reads the broker's API versions. Bounded by the caller's timeout.
    pub(crate) async fn open(
        broker: &str,
        config: &ClusterConfig,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, Error> {
        let io = |source| Error::Io {
            broker: broker.to_owned(),
            source: Arc::new(source),
        };
        let tcp = TcpStream::connect(broker).await.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match tls {
            Some(tls) => Box::new(tls::connect(broker, tls.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        let mut connection = Connection {
            broker: broker.to_owned(),
            stream,
            client_id: StrBytes::from_string(config.client_id.clone()),
            correlation: 0,
            in_flight: false,
            versions: HashMap::new(),
        };
        // ApiVersions v0 is understood by every broker, old or new.
        let versions = connection.call(&ApiVersionsRequest::default(), 0).await?;
        if let Some(e) = ResponseError::try_from_code(versions.error_code) {
            return Err(connection.kafka_error(ApiKey::ApiVersions, e));
        }
        connection.versions = versions
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some(sasl) = &config.sasl {
            connection.authenticate(sasl).await?;
        }
        Ok(connection)
    }

    /// Whether a call on this connection was dropped before its answer was read.
    pub(crate) fn interrupted(&self) -> bool {
        self.in_flight
    }

    /// The highest version of `R` both sides speak, within `ours` (the versions whose
    /// fields the caller fills in).
    pub(crate) fn version<R: Request>(&self, ours: (i16, i16)) -> Result<i16, Error> {
        let (min, max) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or_else(|| self.unsupported::<R>())?;
        let low = min.max(ours.0).max(R::VERSIONS.min);
        let high = max.min(ours.1).min(R::VERSIONS.max);
        if low > high {
            return Err(self.unsupported::<R>());
        }
        Ok(high)
    }

    fn unsupported<R: Request>(&self) -> Error {
        Error::Unsupported {
            broker: self.broker.clone(),
            api: api_name(R::KEY),
        }
    }

    /// An error code answered by the broker.
    pub(crate) fn kafka_error(&self, api: ApiKey, error: ResponseError) -> Error {
        Error::Kafka {
            broker: self.broker.clone(),
            api: format!("{api:?}"),
            error,
        }
    }

    /// Sends `request` as `version` and reads its response.
    pub(crate) async fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, Error> {
        let api = api_name(R::KEY);
        let protocol = |message: String| Error::Protocol {
            broker: self.broker.clone(),
            api: api.clone(),
            message,
        };
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, R::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| protocol(format!("cannot encode: {e}")))?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        let io = |source| Error::Io {
            broker: self.broker.clone(),
            source: Arc::new(source),
        };
        self.in_flight = true;
        self.stream.write_all(&frame).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let size = self.stream.read_i32().await.map_err(io)?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| protocol(format!("response size {size} out of bounds")))?;
        let mut body = vec![0; size];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        self.in_flight = false;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| protocol(format!("cannot decode the header: {e}")))?;
        if header.correlation_id != self.correlation {
            return Err(protocol(format!(
                "answer to request {} while waiting for {}",
                header.correlation_id, self.correlation
            )));
        }
        let response = R::Response::decode(&mut body, version)
            .map_err(|e| protocol(format!("cannot decode: {e}")))?;
        if body.has_remaining() {
            tracing::debug!(broker = %self.broker, %api, left = body.remaining(), "Response longer than its version");
        }
        Ok(response)
    }

    /// SaslHandshake, then SaslAuthenticate rounds (KIP-152 framing).
    async fn authenticate(&mut self, sasl: &crate::config::SaslConfig) -> Result<(), Error> {
        let version = self.version::<SaslHandshakeRequest>((1, 1))?;
        let handshake = self
            .call(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(sasl.mechanism.name())),
                version,
            )
            .await?;
        if let Some(e) = ResponseError::try_from_code(handshake.error_code) {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(Error::Auth {
                broker: self.broker.clone(),
                message: format!(
                    "{} refused ({e}); the broker offers {offered:?}",
                    sasl.mechanism.name()
                ),
            });
        }
        match sasl.mechanism {
            Mechanism::Plain => {
                let mut message = Vec::new();
                message.push(0);
                message.extend_from_slice(sasl.username.as_bytes());
                message.push(0);
                message.extend_from_slice(sasl.password.as_bytes());
                self.sasl_round(message).await?;
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let mut client = scram::Client::new(sasl.mechanism, &sasl.username, &sasl.password);
                let first = client.first();
                let server_first = self.sasl_round(first.into_bytes()).await?;
                let last = client
                    .last(&server_first)
                    .map_err(|message| self.auth_error(message))?;
                let server_last = self.sasl_round(last.into_bytes()).await?;
                client
                    .verify(&server_last)
                    .map_err(|message| self.auth_error(message))?;
            }
        }
        Ok(())
    }

    fn auth_error(&self, message: String) -> Error {
        Error::Auth {
            broker: self.broker.clone(),
            message,
        }
    }

    async fn sasl_round(&mut self, bytes: Vec<u8>) -> Result<Bytes, Error> {
        let version = self.version::<SaslAuthenticateRequest>((0, 2))?;
        let answer = self
            .call(
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)),
                version,
            )
            .await?;
        if let Some(e) = ResponseError::try_from_code(answer.error_code) {
            let detail = answer
                .error_message
                .as_ref()
                .map_or_else(String::new, |m| format!(": {}", m.as_str()));
            return Err(self.auth_error(format!("authentication failed ({e}){detail}")));
        }
        Ok(answer.auth_bytes)
    }
}

/// An API key's name, for errors.
pub(crate) fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("api {key}"), |k| format!("{k:?}"))
}
