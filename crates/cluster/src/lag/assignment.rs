//! Decoding a consumer group member's assignment (Kafka's consumer protocol), to report
//! the partitions of a group that has members but has not committed yet.

use std::collections::BTreeSet;
use std::io;

/// The (topic, partition) pairs in a `ConsumerProtocolAssignment`; empty when the bytes are
/// not one (another protocol, or garbage: this only informs a report).
pub fn parse(bytes: &[u8]) -> BTreeSet<(String, i32)> {
    read(bytes).unwrap_or_default()
}

fn read(bytes: &[u8]) -> std::io::Result<BTreeSet<(String, i32)>> {
    let mut r = Reader::new(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let topic = r.string()?;
        let partitions = r.i32()?;
        for _ in 0..partitions.max(0) {
            out.insert((topic.clone(), r.i32()?));
        }
    }
    Ok(out)
}

/// A cursor over big-endian protocol fields; every read is bounds-checked.
#[derive(Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "truncated response")
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or_else(short)?;
        let slice = self.bytes.get(self.at..end).ok_or_else(short)?;
        self.at = end;
        Ok(slice)
    }

    /// A big-endian i16.
    fn i16(&mut self) -> io::Result<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian i32.
    fn i32(&mut self) -> io::Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A (nullable) string with an i16 length; null reads as empty.
    fn string(&mut self) -> io::Result<String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(String::new());
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b
    }

    #[test]
    fn an_assignment_decodes_to_its_partitions() {
        let got = parse(&encode(&[("a", &[0, 2]), ("b", &[1])]));
        let want: BTreeSet<(String, i32)> = [("a", 0), ("a", 2), ("b", 1)]
            .into_iter()
            .map(|(t, p)| (t.to_owned(), p))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn garbage_decodes_to_nothing_without_panicking() {
        assert!(parse(&[]).is_empty());
        assert!(parse(&[0, 0, 0, 0, 0, 9, 0, 200]).is_empty());
        let mut truncated = encode(&[("topic", &[0, 1, 2])]);
        truncated.truncate(truncated.len() - 7);
        assert!(parse(&truncated).is_empty());
    }

    #[test]
    fn reads_are_bounds_checked() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert!(r.string().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0, 0, 0]);
        assert_eq!(r.string().unwrap(), "");
        assert!(r.i32().is_err());
        let mut r = Reader::new(&[0x7f, 0xff]);
        assert!(r.take(usize::MAX).is_err());
    }
}
