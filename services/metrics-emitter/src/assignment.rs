//! Decoding a consumer group member's assignment (Kafka's consumer protocol), to report
//! the partitions of a group that has members but has not committed yet.

use std::collections::BTreeSet;

use crate::wire::Reader;

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
}
