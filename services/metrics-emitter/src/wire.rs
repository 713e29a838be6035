//! Just enough of the Kafka wire protocol to list consumer groups and describe their
//! members, for brokers where the client library's combined call fails (see `groups`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A group as `ListGroups` (v0) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Group id.
    pub group: String,
    /// `consumer` for consumer groups.
    pub protocol_type: String,
}

/// A group as `DescribeGroups` (v0) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Kafka error code for this group (0: none).
    pub error_code: i16,
    /// Group id.
    pub group: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, ...
    pub state: String,
    /// `consumer` for consumer groups.
    pub protocol_type: String,
    /// Each member's assignment (consumer protocol bytes).
    pub assignments: Vec<Vec<u8>>,
}

const LIST_GROUPS: i16 = 16;
const DESCRIBE_GROUPS: i16 = 15;

/// One broker connection that sends version-0 requests.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    /// Connects to `addr` (`host:port`) with `timeout` for connecting, reads and writes.
    pub fn open(addr: &str, timeout: Duration) -> io::Result<Connection> {
        let target = std::net::ToSocketAddrs::to_socket_addrs(addr)?
            .next()
            .ok_or_else(|| io::Error::other(format!("{addr}: no address")))?;
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            correlation: 0,
        })
    }

    fn call(&mut self, api_key: i16, body: &[u8]) -> io::Result<Vec<u8>> {
        self.correlation += 1;
        let mut request = Vec::with_capacity(body.len() + 32);
        request.extend_from_slice(&api_key.to_be_bytes());
        request.extend_from_slice(&0i16.to_be_bytes());
        request.extend_from_slice(&self.correlation.to_be_bytes());
        put_string(&mut request, "tributary-lag");
        request.extend_from_slice(body);
        let size = i32::try_from(request.len()).map_err(io::Error::other)?;
        self.stream.write_all(&size.to_be_bytes())?;
        self.stream.write_all(&request)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = usize::try_from(i32::from_be_bytes(size))
            .map_err(|_| io::Error::other("negative response size"))?;
        if size > 64 * 1024 * 1024 {
            return Err(io::Error::other("response larger than 64 MiB"));
        }
        let mut response = vec![0u8; size];
        self.stream.read_exact(&mut response)?;
        let mut r = Reader::new(&response);
        if r.i32()? != self.correlation {
            return Err(io::Error::other("response to another request"));
        }
        Ok(response[4..].to_vec())
    }

    /// `ListGroups`: the groups this broker coordinates.
    pub fn list_groups(&mut self) -> io::Result<Vec<Listed>> {
        let response = self.call(LIST_GROUPS, &[])?;
        let mut r = Reader::new(&response);
        let error = r.i16()?;
        if error != 0 {
            return Err(io::Error::other(format!("ListGroups error code {error}")));
        }
        let count = r.i32()?;
        let mut groups = Vec::new();
        for _ in 0..count.max(0) {
            groups.push(Listed {
                group: r.string()?,
                protocol_type: r.string()?,
            });
        }
        Ok(groups)
    }

    /// `DescribeGroups`: state and members of `groups` (which this broker coordinates).
    pub fn describe_groups(&mut self, groups: &[String]) -> io::Result<Vec<Described>> {
        let mut body = Vec::new();
        let count = i32::try_from(groups.len()).map_err(io::Error::other)?;
        body.extend_from_slice(&count.to_be_bytes());
        for g in groups {
            put_string(&mut body, g);
        }
        let response = self.call(DESCRIBE_GROUPS, &body)?;
        let mut r = Reader::new(&response);
        let count = r.i32()?;
        let mut described = Vec::new();
        for _ in 0..count.max(0) {
            let error_code = r.i16()?;
            let group = r.string()?;
            let state = r.string()?;
            let protocol_type = r.string()?;
            let _protocol = r.string()?;
            let members = r.i32()?;
            let mut assignments = Vec::new();
            for _ in 0..members.max(0) {
                let _member_id = r.string()?;
                let _client_id = r.string()?;
                let _client_host = r.string()?;
                let _metadata = r.bytes()?;
                assignments.push(r.bytes()?.to_vec());
            }
            described.push(Described {
                error_code,
                group,
                state,
                protocol_type,
                assignments,
            });
        }
        Ok(described)
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// A cursor over big-endian protocol fields; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "truncated response")
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or_else(short)?;
        let slice = self.bytes.get(self.at..end).ok_or_else(short)?;
        self.at = end;
        Ok(slice)
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> io::Result<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> io::Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A (nullable) string with an i16 length; null reads as empty.
    pub fn string(&mut self) -> io::Result<String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(String::new());
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(io::Error::other)
    }

    /// (Nullable) bytes with an i32 length; null reads as empty.
    pub fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(&[]);
        }
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert!(r.string().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0, 0, 0, 9]);
        assert_eq!(r.string().unwrap(), "");
        assert!(r.bytes().is_err());
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(r.bytes().is_err());
    }
}
