//! A minimal blocking Kafka-protocol client over loopback, for tests and the benchmark.

use crate::server::frame_request;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, HeaderVersion, Request};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Client {
    pub stream: TcpStream,
    correlation: i32,
}

impl Client {
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            stream,
            correlation: 0,
        })
    }

    /// A client over a stream the caller connected (and set timeouts on).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            correlation: 0,
        }
    }

    /// Sends a request and (unless `expect_response` is false, as for acks=0) returns the
    /// decoded response.
    pub fn send<R: Request>(&mut self, version: i16, req: &R) -> anyhow::Result<i32> {
        self.correlation += 1;
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown key"))?;
        let frame = frame_request(key, version, self.correlation, req)?;
        self.stream.write_all(&frame)?;
        Ok(self.correlation)
    }

    /// Reads one response frame; `Ok(None)` when the broker closed the connection.
    pub fn read_frame(&mut self) -> anyhow::Result<Option<Bytes>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        let n = i32::from_be_bytes(len);
        anyhow::ensure!(n >= 0, "negative response length");
        let mut buf = vec![0u8; n as usize];
        self.stream.read_exact(&mut buf)?;
        Ok(Some(Bytes::from(buf)))
    }

    pub fn request<R: Request>(&mut self, version: i16, req: &R) -> anyhow::Result<R::Response> {
        let corr = self.send(version, req)?;
        let frame = self
            .read_frame()?
            .ok_or_else(|| anyhow::anyhow!("connection closed by broker"))?;
        let (c, mut body) =
            crate::server::response_body(frame, R::Response::header_version(version))?;
        anyhow::ensure!(c == corr, "correlation id {c} != {corr}");
        R::Response::decode(&mut body, version)
    }
}
